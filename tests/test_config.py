"""The YAML config: presets, overrides, one-line errors, round trips, documentation."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from diffusion.config import Config, ConfigError, field_docs, from_dict, load_config


@pytest.fixture
def write(tmp_path):
    def _write(text: str, name: str = "c.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


@pytest.mark.parametrize("preset", ["config", "ddpm_cifar10", "digits"])
def test_presets_load_and_round_trip(repo_root, preset, tmp_path):
    cfg = load_config(repo_root / "Configs" / f"{preset}.yaml")
    assert cfg.name == preset
    assert from_dict(cfg.to_dict()) == cfg
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml())
    again = load_config(saved)
    assert dataclasses.replace(again, name=preset) == cfg


def test_every_key_in_the_presets_is_explicit_in_config_yaml(repo_root):
    """config.yaml lists every key, so it doubles as a template of the whole config."""
    raw = yaml.safe_load((repo_root / "Configs" / "config.yaml").read_text())
    for section, values in Config().to_dict().items():
        if isinstance(values, dict):
            assert set(raw[section]) == set(values), section


def test_defaults_apply_to_missing_keys(write):
    cfg = load_config(write("train:\n  steps: 7\n"))
    assert cfg.train.steps == 7
    assert cfg.train.lr == 2e-4 and cfg.model.channel_mult == [1, 2, 2, 2, 4]


def test_overrides_are_converted_to_the_field_type(repo_root):
    cfg = load_config(
        repo_root / "Configs" / "digits.yaml",
        ["train.lr=1e-4", "model.dropout=0", "model.channel_mult=[1,2]", "train.compile=true",
         "model.head_dim=null", "log.run_name=abc", "train.steps=12"],
    )
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.model.channel_mult == [1, 2]
    assert cfg.train.compile is True and cfg.model.head_dim is None
    assert cfg.log.run_name == "abc" and cfg.train.steps == 12


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown key 'lrr' (did you mean 'lr'?)"),
        (["trian.lr=1"], "unknown key 'trian' (did you mean 'train'?)"),
        (["train.steps=many"], "train.steps: expected an integer, got 'many'"),
        (["train.steps=1.5"], "train.steps: expected an integer"),
        (["train.compile=maybe"], "train.compile: expected true or false"),
        (["train.cuda_graphs=true"], "train.cuda_graphs=true needs train.compile=true"),
        (["diffusion.schedule=quadratic"], "expected one of 'linear', 'cosine'"),
        (["train.lr"], "expected section.key=value"),
        (["model.channel_mult=2"], "expected a list of integers"),
        (["train.batch_size=0"], "train.batch_size: expected a positive value"),
        (["model.norm_groups=5"], "model.norm_groups (5) must divide"),
        (["model.image_size=32"], "model.image_size (32) must equal data.image_size (16)"),
        (["sample.steps=5000"], "sample.steps: 5000 is more than diffusion.timesteps (1000)"),
        (["log.sample_steps=5000"], "log.sample_steps: 5000 is more than diffusion.timesteps (1000)"),
        (["sample.fps=0"], "sample.fps: expected a positive integer, got 0"),
        (["train.ema_decay=1.0"], "train.ema_decay"),
        (["sample.eta=1.5"], "sample.eta: expected a value in [0, 1], got 1.5"),
        (["sample.eta=-0.1"], "sample.eta: expected a value in [0, 1], got -0.1"),
        (["diffusion.timesteps=20", "diffusion.schedule=linear", "sample.steps=10", "log.sample_steps=10"],
         "diffusion.timesteps (20) is too small for the linear schedule"),
    ],
)
def test_bad_overrides_give_one_line_errors(repo_root, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "Configs" / "digits.yaml", overrides)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_bad_files_give_one_line_errors(write, tmp_path):
    cases = [
        (tmp_path / "missing.yaml", "missing.yaml: config file not found"),
        (write("model:\n  base_channels: [1\n", "a.yaml"), "malformed YAML at line"),
        (write("- a\n- b\n", "b.yaml"), "expected a mapping of sections"),
        (write("model:\n  base_chanels: 8\n", "c.yaml"), "model: unknown key 'base_chanels' (did you mean 'base_channels'?)"),
        (write("train: 3\n", "d.yaml"), "section 'train' must be a mapping"),
        (write("model:\n  dropout: high\n", "e.yaml"), "model.dropout: expected a number, got 'high'"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_field_docs_document_every_field():
    rows = field_docs()
    documented = {key for key, *_ in rows}
    for section, values in Config().to_dict().items():
        if isinstance(values, dict):
            assert {f"{section}.{k}" for k in values} <= documented
    assert all(comment for *_, comment in rows)
