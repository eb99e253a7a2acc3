"""DistributedDataParallel: two CPU processes (gloo) launched by torchrun end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, RandomConvFeatures, subprocess_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusion.checkpoint import load_checkpoint
from diffusion.config import load_config
from diffusion.fid import fid_of_model
from diffusion.schedule import NoiseSchedule
from models import build_model

# Each process trains through the same Trainer as train.py (a small random network stands in for
# Inception), then dumps the weights it ends with, its own mean loss at each log and the number
# of FID samples it drew.
DRIVER = """
import json, os, sys, torch
import diffusion.fid
from conftest import RandomConvFeatures
from diffusion.config import load_config
from diffusion.trainer import Trainer

diffusion.fid.inception_extractor = lambda device: RandomConvFeatures()
fid_samples, generate_from = [], diffusion.fid.generate_from
def counted(model, schedule, options, **kwargs):
    fid_samples.append(options.num_samples)
    return generate_from(model, schedule, options, **kwargs)
diffusion.fid.generate_from = counted

losses, log = {}, Trainer._log
def local_log(self):
    losses[self.step] = float(self.interval_loss) / self.interval_steps
    log(self)
Trainer._log = local_log

trainer = Trainer(load_config(sys.argv[1], sys.argv[3:]))
trainer.run()
rank = os.environ["RANK"]
torch.save(trainer.model.state_dict(), os.path.join(sys.argv[2], f"rank{rank}.pt"))
with open(os.path.join(sys.argv[2], f"logs{rank}.json"), "w") as f:
    json.dump({"losses": losses, "fid_samples": fid_samples}, f)
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
        "log.log_every=2", "log.fid_every=3", "log.fid_samples=5", "log.sample_sampler=ddim", "log.sample_steps=2",
        f"log.root={tmp_path}", "log.run_name=ddp", f"data.root={tmp_path / 'Data'}",
    ]
    env = subprocess_env()  # the driver imports the tests' stand-in for Inception
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(driver), config, str(tmp_path), *overrides],
        cwd=ROOT, env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT / "tests")]))},
        capture_output=True, text=True, timeout=300,
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

    # The logged loss is the mean over both processes, which saw different batches.
    logs = [json.loads((tmp_path / f"logs{rank}.json").read_text()) for rank in (0, 1)]
    local = [log["losses"] for log in logs]
    assert local[0].keys() == local[1].keys() == {"2", "3"} and local[0] != local[1]
    events = EventAccumulator(str(tmp_path / "ddp" / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({int(step): (local[0][step] + local[1][step]) / 2 for step in local[0]})

    # The processes drew 2 and 3 of the 5 FID samples; rank zero's FID is that of one process.
    assert [log["fid_samples"] for log in logs] == [[2], [3]]
    ema = build_model(cfg)
    ema.load_state_dict(state["ema"])
    alone = fid_of_model(ema, NoiseSchedule.from_config(cfg.diffusion), cfg, 5, "cpu", extractor=RandomConvFeatures())
    assert [(e.step, e.value) for e in events.Scalars("eval/fid")] == [(3, pytest.approx(alone, rel=1e-6))]
