"""The training loop behind ``train.py``: ``train(cfg, resume)`` runs or resumes one run.

One optimizer step (Ho et al. Algorithm 1, with the DDPM recipe of their appendix B):

* ``train.grad_accum`` micro-batches of ``train.batch_size`` images per process, each with its
  own t ~ U{0..T-1} and noise, loss ``schedule.training_loss`` (L_simple, Ho et al. eq. 14, for
  the ``eps`` objective), under autocast for ``bf16``/``fp16`` (``fp16`` with a ``GradScaler``);
* gradient all-reduce across processes (DistributedDataParallel), clipping of the global
  gradient norm to ``train.grad_clip``;
* AdamW at ``lr_n = train.lr * min(1, n / train.warmup_steps)`` for the n-th step (n = 1, 2, ...),
  constant after the warmup as in Ho et al., or decayed to 0 over the run's last part
  (``train.lr_decay``, :func:`learning_rate`);
* every ``train.ema_every`` steps an EMA update (:mod:`diffusion.ema`), and one of each
  power-function EMA of ``train.posthoc_ema`` (:mod:`diffusion.posthoc_ema`).

The run folder ``<log.root>/<log.run_name>/`` holds ``config.yaml`` (the resolved config),
``checkpoints/`` (``step_XXXXXXX.pt``, the newest ``train.keep_checkpoints`` kept, and
``last.pt``), ``posthoc/step_XXXXXXX.pt`` (post-hoc EMA snapshots, all kept), ``tensorboard/``
and ``samples/step_XXXXXXX.png``, and ``.ddpm-run``: the mark of a folder this project made, and
a lock held while a run writes there. A new run claims its folder atomically and refuses an existing one (unless it is a run folder without any checkpoint, left by
a run that failed before its first: that one is reused); ``resume`` continues one. A checkpoint
holds everything the next step depends on (weights, EMA, optimizer, scaler, data position, every
process's RNG states), so on the CPU a run stopped after N steps and resumed for N more ends
bitwise-identical to 2N uninterrupted steps.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import platform
import random
import secrets
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from diffusion import distributed
from diffusion.atomic import atomic_path, remove_stale, write_atomic
from diffusion.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from diffusion.conditioning import data_distribution, drop_labels, grid_conditions, null_value
from diffusion.config import Config, TrainConfig
from diffusion.data import (
    BatchIterator,
    Labels,
    channels_of,
    prepare_dataset,
    prepare_labeled_dataset,
)
from diffusion.device import autocast_dtype, compile_network, resolve_device, tune_host_allocator
from diffusion.ema import EMA, PowerEMA
from diffusion.errors import CheckpointError, ConfigError
from diffusion.posthoc_ema import gamma_from_sigma_rel, write_snapshot
from diffusion.schedule import NoiseSchedule
from models import build_model

NEVER = 2**62  # "no non-finite loss yet" in the device-side record of the first bad step
RUN_MARK = ".ddpm-run"  # in every run folder: marks it as made here, locked (flock) while a run writes to it


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/inf; the checkpoints written before are kept."""


def train(cfg: Config, resume: str | Path | bool | None = None) -> Path:
    """Train (or resume, see :class:`Trainer`) and return the run folder."""
    return Trainer(cfg, resume).run()


def learning_rate(step: int, train_cfg: TrainConfig) -> float:
    """The learning rate of the ``step``-th optimizer step (1-based): ``lr * warmup * decay``.

    warmup = min(1, n / warmup_steps) (Goyal et al. 2017); decay is 1 until n0 = lr_decay_start *
    steps and then, with p = (n - 1 - n0) / (steps - n0) in [0, 1), falls to 0 as 1 - p (``linear``)
    or (1 + cos(pi p)) / 2 (``cosine``, Loshchilov & Hutter 2017 eq. 5 without restarts), so the
    last step still learns; ``none`` keeps the rate constant as in Ho et al.
    """
    warmup = 1.0 if train_cfg.warmup_steps == 0 else min(1.0, step / train_cfg.warmup_steps)
    start = train_cfg.lr_decay_start * train_cfg.steps
    if train_cfg.lr_decay == "none" or step - 1 <= start:
        return train_cfg.lr * warmup
    p = min(1.0, (step - 1 - start) / (train_cfg.steps - start))
    decay = 1.0 - p if train_cfg.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return train_cfg.lr * warmup * decay


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` was made by a training run (its mark; or, from before the mark, the
    ``config.yaml`` and ``tensorboard/`` every run writes)."""
    return (folder / RUN_MARK).is_file() or ((folder / "config.yaml").is_file() and (folder / "tensorboard").is_dir())


def has_checkpoints(folder: Path) -> bool:
    return any((folder / "checkpoints").glob("*.pt"))


def claim_run_folder(run_dir: Path, new: bool) -> Any:
    """Create (or, for ``new=False`` or a reusable folder, open) ``run_dir`` and lock it for this
    process; the open lock file is returned (closing it releases the lock). Two runs started at
    once with one folder: exactly one wins, the other gets a one-line :class:`ConfigError`."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
        made = True
    except FileExistsError:
        made = False
        if new and not (run_dir / RUN_MARK).is_file():
            raise _exists(run_dir) from None
    lock = open(run_dir / RUN_MARK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(f"{run_dir}: another training run is writing to this run folder; choose another log.run_name") from None
    if new and not made:
        if has_checkpoints(run_dir):
            lock.close()
            raise _exists(run_dir)
        for leftover in ("tensorboard", "samples", "posthoc"):  # of the start that failed before its first checkpoint
            shutil.rmtree(run_dir / leftover, ignore_errors=True)
    return lock


def _exists(run_dir: Path) -> ConfigError:
    return ConfigError(
        f"{run_dir}: run folder already exists; continue it with --resume {run_dir}, or choose another log.run_name"
    )


def library_versions() -> dict[str, str]:
    try:
        ddpm = metadata.version("ddpm")
    except metadata.PackageNotFoundError:
        ddpm = "unknown"
    return {"ddpm": ddpm, "torch": str(torch.__version__), "python": platform.python_version()}


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy, torch and device RNG states, as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run; ``Trainer(cfg, resume).run()`` is :func:`train`.

    ``resume``: None/False starts a new run in ``<log.root>/<log.run_name>`` (an existing folder
    is refused: nothing a user made is overwritten); True continues the run named by
    ``log.run_name``, or else the newest ``<log.root>/<config name>-*`` run; a path continues
    from that checkpoint file or run folder (its ``checkpoints/last.pt``). A resumed run keeps
    its folder and takes ``cfg`` as given, so e.g. ``train.steps`` can be raised; the model and
    diffusion sections must match the checkpoint's.
    """

    def __init__(self, cfg: Config, resume: str | Path | bool | None = None) -> None:
        self.cfg = cfg
        self.env = distributed.from_environment()
        self.device = resolve_device(cfg.train.device, "train.device", self.env.local_rank)
        tune_host_allocator(self.device)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device, "train.precision")
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        channels = channels_of(cfg.data.source)
        if cfg.model.in_channels != channels:
            raise ConfigError(
                f"model.in_channels is {cfg.model.in_channels} but data.source '{cfg.data.source}' has"
                f" {channels} channel(s); set model.in_channels={channels}"
            )
        self.fid_extractor = None  # made now: a missing 'fid' extra or Inception weights stop the run before step 1
        if cfg.log.fid_every and self.env.is_main:
            from diffusion.fid import inception_extractor

            self.fid_extractor = inception_extractor(self.device)
        distributed.init_process_group(self.env, self.device)
        self.run_dir, checkpoint, self.new_folder = self.env.broadcast(self._run_folder(resume) if self.env.is_main else None)
        self.lock: Any = None  # rank zero's lock of the run folder, taken when the run starts
        self.checkpoint_dir = self.run_dir / "checkpoints"

        if self.env.is_main:
            images, self.labels = self._prepare_data(rank_zero=True)
        self.env.barrier()  # rank zero has built the cache
        if not self.env.is_main:
            images, self.labels = self._prepare_data(rank_zero=False)
        cfg = self.cfg  # with the class names of the data

        t = cfg.train
        seed_everything(t.seed)  # the same initial weights on every process
        self.model = build_model(cfg).to(self.device)
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.env.rank:
            seed_everything(t.seed + self.env.rank)  # per-process noise and dropout
        self.ema = EMA(self.model, t.ema_decay)
        self.posthoc = [PowerEMA(self.model, gamma_from_sigma_rel(width)) for width in t.posthoc_ema]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay,
            fused=self.device.type in ("cuda", "cpu"),  # one kernel for all parameters (docs/results.md#fused-adamw-on-cpu)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.schedule = NoiseSchedule.from_config(cfg.diffusion).to(self.device)
        self.batches = BatchIterator(
            images, t.batch_size, self.device, seed=t.seed, rank=self.env.rank, world_size=self.env.world_size,
            random_flip=cfg.data.random_flip, channels_last=t.channels_last,
            labels=self.labels.values if self.labels is not None else None,
        )
        self.step = 0
        self.snapshot_step = -1
        if checkpoint is not None:
            self._load(checkpoint)
        self.saved_step = self.step if checkpoint is not None else None  # step of checkpoints/last.pt

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids) if self.env.enabled else None
        net = self.ddp if self.ddp is not None else self.model
        self.net = compile_network(net, self.device, t.cuda_graphs) if t.compile else net
        self.stop_requested = False
        self.writer = None
        self.last_loss = math.nan
        self._reset_interval()
        self.first_bad_step = torch.tensor(NEVER, device=self.device)

    def _prepare_data(self, rank_zero: bool) -> tuple[np.ndarray, Labels | None]:
        """The image cache, and for a conditional model its labels; the data's class names go
        into ``self.cfg`` (and so into config.yaml and every checkpoint)."""
        data = self.cfg.data
        if not self.cfg.conditional:
            return prepare_dataset(data, rank_zero), None
        images, labels = prepare_labeled_dataset(data, rank_zero)
        classes = self.cfg.model.num_classes
        if classes:
            if len(labels.names) != classes:
                raise ConfigError(
                    f"model.num_classes is {classes} but data.source '{data.source}' has {len(labels.names)}"
                    f" classes ({', '.join(labels.names[:10])}{', ...' if len(labels.names) > 10 else ''});"
                    f" set model.num_classes={len(labels.names)}"
                )
            if data.class_names and data.class_names != labels.names:
                raise ConfigError(f"data.class_names {data.class_names} differ from the data's classes {labels.names}")
            self.cfg = dataclasses.replace(self.cfg, data=dataclasses.replace(data, class_names=labels.names))
        return images, labels

    # Run folder and checkpoints ------------------------------------------------------------

    def _run_folder(self, resume: str | Path | bool | None) -> tuple[Path, Path | None, bool]:
        """(run folder, checkpoint to resume from or None, whether the folder is to be made).
        Only checks: nothing is created before every input has been validated."""
        log = self.cfg.log
        root = Path(log.root)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root}: log.root is a file; expected a folder for run folders")
        if resume is None or resume is False:
            return self._new_folder(), None, True
        if resume is True:
            if log.run_name:
                run_dir = root / log.run_name
            else:
                runs = sorted(root.glob(f"{self.cfg.name}-*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
                if not runs:
                    raise CheckpointError(f"{root}: no run of '{self.cfg.name}' to resume; pass --resume PATH")
                run_dir = runs[-1].parent.parent
            if is_run_folder(run_dir) and not has_checkpoints(run_dir):
                raise CheckpointError(f"{run_dir}: the run stopped before its first checkpoint; start it again without --resume")
            return run_dir, resolve_checkpoint(run_dir), False
        checkpoint = resolve_checkpoint(resume)
        folder = checkpoint.parent.parent
        if checkpoint.parent.name == "checkpoints" and is_run_folder(folder):
            return folder, checkpoint, False
        run_dir = self._new_folder()  # never write into a folder this project did not make
        self._print(f"{checkpoint} is not in a run folder: continuing it in a new run folder {run_dir}")
        return run_dir, checkpoint, True

    def _new_folder(self) -> Path:
        """``<log.root>/<log.run_name>``, refused when it exists (unless reusable, see
        :func:`claim_run_folder`); by default ``<config name>-<time>-<random>``, unique."""
        log = self.cfg.log
        if not log.run_name:
            return Path(log.root) / f"{self.cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        run_dir = Path(log.root) / log.run_name
        if run_dir.exists():
            if not (run_dir / RUN_MARK).is_file() or has_checkpoints(run_dir):
                raise _exists(run_dir)
            self._print(f"{run_dir}: reusing this run folder: it has no checkpoint (an earlier start stopped before its first)")
        return run_dir

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        saved = state["config"]
        mine = self.cfg.to_dict()
        compared = [(section, key) for section in ("model", "diffusion") for key in mine[section]]
        for section, key in [*compared, ("data", "attributes"), ("data", "class_names"), ("train", "posthoc_ema")]:
            value = mine[section][key]
            if saved.get(section, {}).get(key, value) != value:
                raise CheckpointError(
                    f"{path}: trained with {section}.{key}={saved[section][key]!r} but the config says {value!r}"
                )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"], state["ema_updates"])
        if self.posthoc and "posthoc_ema" not in state:
            raise CheckpointError(f"{path}: trained without train.posthoc_ema, so it cannot be resumed with it")
        for profile, weights in zip(self.posthoc, state.get("posthoc_ema", []), strict=True):
            profile.load_state_dict(weights, state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        t = self.cfg.train
        for group in self.optimizer.param_groups:  # the config's hyperparameters win
            group.update(betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.batches.load_state_dict(state["data"])
        if len(state["rng"]) == self.env.world_size:
            set_rng_state(state["rng"][self.env.rank], self.device)
        else:
            seed_everything(t.seed + self.env.rank + 1_000_003 * self.step)
            self._print(
                f"warning: {path} was written by {len(state['rng'])} process(es), this run has"
                f" {self.env.world_size}: random streams reseeded (not bitwise reproducible)"
            )

    def _save(self) -> Path:
        """Write ``step_XXXXXXX.pt`` and point ``last.pt`` at it (rank zero; all ranks call)."""
        self._check_finite()
        rng = self.env.gather(rng_state(self.device))
        path = self.checkpoint_dir / f"step_{self.step:07d}.pt"
        self.saved_step = self.step
        if not self.env.is_main:
            return path
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "ema_updates": self.ema.updates,
            "posthoc_ema": [profile.state_dict() for profile in self.posthoc],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "data": self.batches.state_dict(),
            "rng": rng,
            "config": self.cfg.to_dict(),
            "versions": library_versions(),
        }
        save_checkpoint(state, path)
        self._snapshot()
        last = self.checkpoint_dir / "last.pt"
        try:  # a hard link renamed over last.pt: atomic, and no second copy on disk
            with atomic_path(last) as link:
                link.unlink()
                os.link(path, link)
        except OSError:  # a file system without hard links
            save_checkpoint(state, last)
        steps = sorted(self.checkpoint_dir.glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
        for old in steps[: -self.cfg.train.keep_checkpoints]:
            old.unlink()
        return path

    def _snapshot(self) -> None:
        """Rank zero: the post-hoc EMA snapshot of this step, unless this run wrote it already
        (one a stopped run wrote beyond its last checkpoint is overwritten on resume)."""
        if self.posthoc and self.ema.updates and self.snapshot_step != self.step:
            self._check_finite()  # every rank: it may all-reduce
            if self.env.is_main:
                write_snapshot(self.run_dir, self.step, self.posthoc)
            self.snapshot_step = self.step

    def _prepare_run_folder(self) -> None:
        """Rank zero: claim the run folder; the resolved config.yaml, TensorBoard; stale temporary files removed."""
        from torch.utils.tensorboard import SummaryWriter

        self.lock = claim_run_folder(self.run_dir, self.new_folder)
        self.checkpoint_dir.mkdir(exist_ok=True)
        remove_stale(self.checkpoint_dir)  # left by a run killed while saving
        resolved = dataclasses.replace(
            self.cfg, log=dataclasses.replace(self.cfg.log, root=str(self.run_dir.parent), run_name=self.run_dir.name)
        )
        text = resolved.to_yaml()
        write_atomic(self.run_dir / "config.yaml", lambda f: f.write(text.encode()))
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), self.step)

    # The loop ------------------------------------------------------------------------------

    def run(self) -> Path:
        """Train to ``train.steps`` (or until SIGINT/SIGTERM); return the run folder."""
        try:
            if self.env.is_main:
                self._prepare_run_folder()
            with self._stop_on_signals():
                self._loop()
        finally:
            self.close()
        return self.run_dir

    def close(self) -> None:
        """Stop the data loader, close the logs and the run folder's lock, leave the process group."""
        self.batches.close()
        if self.writer is not None:
            self.writer.close()
        if self.lock is not None:
            self.lock.close()
        self.env.close()

    def _loop(self) -> None:
        t, log = self.cfg.train, self.cfg.log
        if self.step >= t.steps:
            self._print(f"{self.run_dir}: already at step {self.step} of train.steps={t.steps}; raise train.steps to go on")
            return
        start, started = self.step, time.perf_counter()
        self.bar = tqdm(total=t.steps, initial=self.step, unit="step", dynamic_ncols=True, disable=not self.env.is_main)
        try:
            while self.step < t.steps:
                self.train_step()
                self.bar.update()
                stop = self.env.any(self.stop_requested)
                done = stop or self.step == t.steps
                if self.step % log.log_every == 0 or done:
                    self._log()
                if log.sample_every and (self.step % log.sample_every == 0 or (done and not stop)):
                    self._sample_grid()
                if log.fid_every and self.step % log.fid_every == 0:
                    self._fid()
                if self.posthoc and self.step % t.posthoc_every == 0:
                    self._snapshot()
                if self.step % t.checkpoint_every == 0 or done:
                    saved = self._save()
                if stop:
                    self._print(f"stopped at step {self.step}, checkpoint {saved}; resume with:\n  {self.resume_command()}")
                    return
        finally:
            self.bar.close()
        elapsed = time.perf_counter() - started
        images = (self.step - start) * t.batch_size * t.grad_accum * self.env.world_size
        self._print(
            f"trained steps {start}-{self.step} in {elapsed:.0f} s ({(self.step - start) / elapsed:.2f} steps/s,"
            f" {images / elapsed:.0f} img/s), final loss {self.last_loss:.4f}; run folder {self.run_dir}"
        )

    def train_step(self) -> None:
        """One optimizer step (``train.grad_accum`` micro-batches), its EMA updates and bookkeeping."""
        t = self.cfg.train
        lr = learning_rate(self.step + 1, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            x0, labels = next(self.batches) if self.labels is not None else (next(self.batches), None)
            if labels is not None:
                labels = drop_labels(labels, t.cond_drop_prob, null_value(self.cfg))
            last = micro == t.grad_accum - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss = self.schedule.training_loss(self.net, x0, labels=labels) / t.grad_accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.step % t.ema_every == 0:
            self.ema.update(self.model)
            for profile in self.posthoc:
                profile.update(self.model)
        # Bookkeeping on the device: no host sync until the next log or checkpoint.
        bad = ~torch.isfinite(loss_sum)
        if not self.scaler.is_enabled():  # fp16 overflows in the gradient are the scaler's business
            bad |= ~torch.isfinite(grad_norm)
        self.first_bad_step = torch.where(bad & (self.first_bad_step == NEVER), self.step, self.first_bad_step)
        self.interval_loss += loss_sum
        # A step the fp16 scaler skipped has a non-finite norm: average the others, count the skips.
        applied = torch.isfinite(grad_norm)
        self.interval_grad_norm += torch.where(applied, grad_norm, 0.0)
        self.interval_applied += applied
        self.interval_steps += 1

    def _reset_interval(self) -> None:
        self.interval_loss = torch.zeros((), device=self.device)
        self.interval_grad_norm = torch.zeros((), device=self.device)
        self.interval_applied = torch.zeros((), device=self.device)
        self.interval_steps = 0
        self.interval_start = time.perf_counter()

    def _check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if any process saw a non-finite loss or gradient."""
        first_bad = self.first_bad_step.clone()
        if self.env.enabled:
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
        bad_step = int(first_bad)
        if bad_step == NEVER:
            return
        last = self.checkpoint_dir / "last.pt"
        kept = f"the last good checkpoint is {last} (step {self.saved_step})" if self.saved_step else "no checkpoint was written"
        raise NonFiniteLossError(
            f"the loss or gradient became non-finite at step {bad_step}; training stopped and {kept}."
            f" Try a lower train.lr (now {self.cfg.train.lr:g}) or train.precision=fp32"
        )

    def _log(self) -> None:
        self._check_finite()
        stats = torch.stack([self.interval_loss, self.interval_grad_norm, self.interval_applied])
        if self.env.enabled:
            torch.distributed.all_reduce(stats)
        loss_sum, grad_norm_sum, applied = stats.tolist()
        loss = loss_sum / (self.interval_steps * self.env.world_size)
        grad_norm = grad_norm_sum / applied if applied else math.nan
        skipped = self.interval_steps - applied / self.env.world_size  # every process skips the same steps
        t = self.cfg.train
        images = self.interval_steps * t.batch_size * t.grad_accum * self.env.world_size
        images_per_s = images / (time.perf_counter() - self.interval_start)
        lr = self.optimizer.param_groups[0]["lr"]
        self.last_loss = loss
        if self.env.is_main:
            scalars = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "images_per_s": images_per_s,
                       "ema_decay": self.ema.current_decay}
            if self.scaler.is_enabled():
                scalars["skipped_steps"] = skipped
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, self.step)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}", lr=f"{lr:.2e}", refresh=False)
        self._reset_interval()

    def _sample_grid(self) -> None:
        """Rank zero: a grid of EMA samples to ``samples/step_XXXXXXX.png`` and TensorBoard."""
        if not self.env.is_main:
            return
        from diffusion.media import image_grid, save_png
        from diffusion.samplers import generate_from

        conditions = grid_conditions(self.cfg, self.cfg.log.sample_count)
        count = len(conditions.labels) if conditions is not None else self.cfg.log.sample_count
        images = generate_from(
            self.ema.module, self.schedule, self.cfg.preview_sampling(count),
            device=self.device, autocast_dtype=self.amp_dtype,
            labels=conditions.labels if conditions is not None else None,
        )
        grid = image_grid(images, nrow=conditions.row_length if conditions is not None else None)
        save_png(grid, self.run_dir / "samples" / f"step_{self.step:07d}.png")
        self.writer.add_image("samples/ema", grid, self.step, dataformats="HWC")

    def _fid(self) -> None:
        """FID of the EMA model (``log.fid_samples`` samples) to TensorBoard: every process
        samples its share, rank zero scores them all."""
        from diffusion.fid import fid_of_model

        count = self.cfg.log.fid_samples
        labels = data_distribution(self.labels.values, count, self.cfg.sample.seed) if self.labels is not None else None
        value = fid_of_model(
            self.ema.module, self.schedule, self.cfg, count, self.device,
            autocast_dtype=self.amp_dtype, extractor=self.fid_extractor, env=self.env, labels=labels,
        )
        if value is None:
            return
        self.writer.add_scalar("eval/fid", value, self.step)
        self.bar.write(f"step {self.step}: FID {value:.2f} ({self.cfg.log.fid_samples} EMA samples)")

    # Stopping ------------------------------------------------------------------------------

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM ask the loop to stop after the current step; a second one acts as usual."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_requested = True
            signal.signal(signum, previous[signum])
            self._print(f"{signal.Signals(signum).name}: stopping after this step to save a checkpoint (repeat to abort)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def resume_command(self) -> str:
        """The command line that continues this run."""
        launcher = "python"
        if self.env.enabled:
            same_node = self.env.world_size == self.env.local_world_size
            launcher = f"torchrun --nproc_per_node={self.env.local_world_size}" if same_node else "torchrun <same flags>"
        config = shlex.quote(str(self.run_dir / "config.yaml"))
        return f"{launcher} train.py --config {config} --resume {shlex.quote(str(self.run_dir))}"

    def _print(self, message: str) -> None:
        if self.env.is_main:
            tqdm.write(message, file=sys.stderr)
