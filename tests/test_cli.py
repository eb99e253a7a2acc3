"""The shared command-line dialect (diffusion/cli.py): presets, one-line usage errors, threads."""

from __future__ import annotations

import argparse

import pytest
import torch

from diffusion.cli import (
    Parser,
    add_config_flag,
    add_device_flag,
    add_threads_flag,
    config_path,
    positive_int,
    set_threads,
)
from diffusion.errors import UserError


def test_config_is_a_path_or_a_preset_name(repo_root, tmp_path):
    assert config_path("digits") == repo_root / "Configs" / "digits.yaml"
    assert config_path("ddpm_cifar10").is_file()
    own = tmp_path / "mine.yaml"
    assert config_path(str(own)) == own  # a YAML path is taken as given, even before it exists
    with pytest.raises(UserError, match=r"--config: 'digitz' is neither a YAML file nor a preset under Configs/ \(.*digits"):
        config_path("digitz")


def test_parser_errors_are_user_errors_and_flags_share_names():
    parser = Parser("test")
    add_config_flag(parser, multiple=True, default=["digits"])
    add_device_flag(parser)
    add_threads_flag(parser)
    args = parser.parse_args(["--preset", "a", "b", "--threads", "3"])  # --preset is --config's alias
    assert (args.config, args.device, args.threads) == (["a", "b"], "auto", 3)
    with pytest.raises(UserError, match="argument --threads: expected a positive integer, got 0"):
        parser.parse_args(["--threads", "0"])
    with pytest.raises(UserError, match="unrecognized arguments: --batch"):
        parser.parse_args(["--batch", "3"])


def test_positive_int_and_threads():
    assert positive_int("7") == 7
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    before = torch.get_num_threads()
    try:
        set_threads(None)
        assert torch.get_num_threads() == before
        set_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
