"""DistributedDataParallel: two CPU processes (gloo) launched by torchrun end with identical weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, subprocess_env

from diffusion.checkpoint import load_checkpoint
from diffusion.config import load_config
from diffusion.trainer import build_model

# Each process trains through the same Trainer as train.py, then dumps the weights it ends with.
DRIVER = """
import os, sys, torch
from diffusion.config import load_config
from diffusion.trainer import Trainer

trainer = Trainer(load_config(sys.argv[1], sys.argv[3:]))
trainer.run()
torch.save(trainer.model.state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    config = str(ROOT / "Configs" / "digits.yaml")
    overrides = [
        "model.base_channels=8", "model.channel_mult=[1,2]", "model.norm_groups=4", "model.num_res_blocks=1",
        "model.attention_resolutions=[]", "data.image_size=8", "model.image_size=8", "model.dropout=0.1",
        "train.batch_size=4", "train.steps=3", "train.warmup_steps=0", "train.device=cpu", "log.sample_every=0",
        f"log.root={tmp_path}", "log.run_name=ddp", f"data.root={tmp_path / 'Data'}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(driver), config, str(tmp_path), *overrides],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the processes' weights diverged"

    cfg = load_config(config, overrides)
    torch.manual_seed(cfg.train.seed)
    initial = build_model(cfg).state_dict()
    assert not torch.equal(rank0["conv_out.weight"], initial["conv_out.weight"]), "nothing was trained"

    state = load_checkpoint(tmp_path / "ddp")  # written by rank zero alone
    assert all(torch.equal(state["model"][k], v) for k, v in rank0.items())
    assert state["step"] == 3 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"]), "per-process seeds"
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["last.pt", "step_0000003.pt"]
