"""DistributedDataParallel: two CPU processes (gloo) launched by torchrun end with identical weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, subprocess_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusion.checkpoint import load_checkpoint
from diffusion.config import load_config
from diffusion.trainer import build_model

# Each process trains through the same Trainer as train.py, then dumps the weights it ends with
# and its own mean loss at each log.
DRIVER = """
import json, os, sys, torch
from diffusion.config import load_config
from diffusion.trainer import Trainer

losses, log = {}, Trainer._log
def local_log(self):
    losses[self.step] = float(self.interval_loss) / self.interval_steps
    log(self)
Trainer._log = local_log

trainer = Trainer(load_config(sys.argv[1], sys.argv[3:]))
trainer.run()
rank = os.environ["RANK"]
torch.save(trainer.model.state_dict(), os.path.join(sys.argv[2], f"rank{rank}.pt"))
with open(os.path.join(sys.argv[2], f"losses{rank}.json"), "w") as f:
    json.dump(losses, f)
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
        "log.log_every=2", f"log.root={tmp_path}", "log.run_name=ddp", f"data.root={tmp_path / 'Data'}",
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

    # The logged loss is the mean over both processes, which saw different batches.
    local = [json.loads((tmp_path / f"losses{rank}.json").read_text()) for rank in (0, 1)]
    assert local[0].keys() == local[1].keys() == {"2", "3"} and local[0] != local[1]
    events = EventAccumulator(str(tmp_path / "ddp" / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({int(step): (local[0][step] + local[1][step]) / 2 for step in local[0]})
