"""Typed run configuration: YAML sections -> dataclasses with documented defaults.

A config file has the sections ``data``, ``model``, ``diffusion``, ``train``, ``sample`` and
``log``. Each maps onto one dataclass below; a field's comment is its documentation (the
README's config table is generated from these comments). Command-line overrides use dotted
keys, ``train.lr=1e-4 model.channel_mult=[1,2,2]``, and are parsed as YAML scalars.

Every problem (missing file, malformed YAML, unknown key, wrong type, bad value) raises
:class:`ConfigError` with one line naming the file, the key path and what is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from diffusion.errors import ConfigError
from diffusion.posthoc_ema import gamma_from_sigma_rel

DataSource = Literal["celeba", "cifar10", "folder", "digits"]
DATA_SOURCES: tuple[str, ...] = typing.get_args(DataSource)


@dataclass
class DataConfig:
    source: DataSource = "celeba"  # dataset: CelebA or CIFAR-10 (torchvision), any image folder under root, or scikit-learn's bundled 8x8 digits
    root: str = "Data"  # where datasets live; the prepared uint8 cache goes to <root>/cache/
    image_size: int = 64  # side of the square training images, in pixels
    random_flip: bool = True  # random horizontal flips, applied on the batch tensors on the training device
    num_workers: int = 4  # processes that decode images while the cache is prepared (0: in the main process)
    attributes: list[str] = field(default_factory=list)  # CelebA attributes to condition on, e.g. [Smiling, Eyeglasses, Male] (list_attr_celeba.txt names); each is present, absent or dropped
    class_names: list[str] = field(default_factory=list)  # names of the model.num_classes labels in index order; empty: training fills them in from the data (digits 0-9, CIFAR-10's classes, sorted subfolders of a folder)


@dataclass
class ModelConfig:
    image_size: int = 64  # input resolution; must equal data.image_size (it places the attention levels)
    in_channels: int = 3  # image channels: 3 for RGB, 1 for digits
    base_channels: int = 128  # channels of the first level; level i has base_channels * channel_mult[i]
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2, 4])  # channel multiplier per resolution level
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: list[int] = field(default_factory=lambda: [16])  # resolutions (in pixels) whose blocks get self-attention
    num_heads: int = 1  # attention heads (ignored when head_dim is set)
    head_dim: int | None = None  # channels per attention head; overrides num_heads when set
    dropout: float = 0.1  # dropout inside residual blocks
    norm_groups: int = 32  # GroupNorm groups; must divide every block's channel count
    scale_shift: bool = False  # time conditioning as GroupNorm scale and shift (improved-diffusion) instead of an added bias
    num_classes: int = 0  # class-conditional model with this many classes (labels of digits, CIFAR-10, or one subfolder per class); 0: unconditional
    downsample_padding: Literal["symmetric", "tf_same"] = "symmetric"  # zero padding of the stride-2 downsampling convs: a pixel on every side, or TensorFlow 'SAME' (right and bottom only, as the paper's released weights)


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T, the number of forward-process steps
    schedule: Literal["linear", "cosine"] = "linear"  # beta schedule: Ho et al. linear, or Nichol & Dhariwal cosine
    beta_start: float = 1e-4  # first beta of the linear schedule (at T = 1000; scaled by 1000/T otherwise)
    beta_end: float = 0.02  # last beta of the linear schedule (at T = 1000; scaled by 1000/T otherwise)
    objective: Literal["eps", "x0", "v"] = "eps"  # what the network predicts: the noise (L_simple), the clean image, or v
    min_snr_gamma: float = 0.0  # min-SNR-gamma loss weighting (Hang et al. 2023; they use 5): each timestep's loss weighted as min(SNR, gamma) on the x0 error; 0: off (unweighted, Ho et al.)


@dataclass
class TrainConfig:
    steps: int = 500_000  # optimizer steps to train for
    batch_size: int = 64  # images per step per process (global batch = batch_size * processes * grad_accum)
    grad_accum: int = 1  # micro-batches accumulated into one optimizer step
    lr: float = 2e-4  # peak AdamW learning rate
    warmup_steps: int = 5000  # linear learning-rate warmup from 0 to lr
    lr_decay: Literal["none", "linear", "cosine"] = "none"  # decay of the learning rate to 0 over the run's last part: none keeps it constant (Ho et al.)
    lr_decay_start: float = 0.0  # fraction of train.steps after which lr_decay begins (0: right away, 0.5: over the second half)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    grad_clip: float = 1.0  # clip the global gradient norm to this value (0: no clipping)
    ema_decay: float = 0.9999  # EMA decay; the effective decay is min(ema_decay, (1 + n) / (10 + n)) after n updates
    ema_every: int = 1  # update the EMA weights every this many steps
    posthoc_ema: list[float] = field(default_factory=list)  # post-hoc EMA: relative widths of the power-function EMAs whose snapshots are kept (Karras et al. 2024 keep [0.05, 0.1]), so that sample.ema_length / --ema-length can pick any EMA length after training; empty: off
    posthoc_every: int = 5000  # with posthoc_ema: write posthoc/step_XXXXXXX.pt every this many steps (and at every checkpoint)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast dtype; auto: bf16 on CUDA; on a CPU fp32, except that sampling is bf16 where the CPU has it natively (AMX or AVX-512 BF16; why: docs/results.md#bf16-on-cpus)
    compile: bool = False  # torch.compile the model (on CUDA its graph keeps activations channels-last; the model stays NCHW)
    cuda_graphs: bool = False  # with compile on CUDA: replay the compiled model as CUDA graphs (torch.compile mode reduce-overhead); no effect on other devices
    channels_last: bool = False  # channels-last memory format for the model and batches (off by default: docs/results.md#gpu-h200)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # auto picks cuda, then mps, then cpu
    seed: int = 0  # seeds data order, noise, dropout and flips (each process adds its rank); 0 to 2^32 - 1
    checkpoint_every: int = 5000  # write checkpoints/step_XXXXXXX.pt and last.pt every this many steps
    keep_checkpoints: int = 3  # newest step checkpoints kept (last.pt is always kept)
    cond_drop_prob: float = 0.1  # conditional models: chance that a label (each attribute on its own) is replaced by the null token, so one network also learns the unconditional model


@dataclass
class SampleConfig:
    sampler: Literal["ddpm", "ddim", "dpm++", "dpm++sde"] = "ddpm"  # reverse process used by inference.py; dpm++sde: DPM-Solver++(2M) SDE, stochastic like ddpm
    steps: int = 1000  # network evaluations, at most T; fewer than T respaces the ddpm sampler too (Nichol & Dhariwal sec. 4)
    eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 DDPM-like
    ddpm_variance: Literal["beta", "beta_tilde", "analytic"] = "beta"  # reverse variance of the ddpm sampler: Ho et al. sec. 3.2, or analytic: Analytic-DPM (Bao et al. 2022), estimated from the training data before sampling
    analytic_images: int = 100  # training images per step for the analytic variance's Monte-Carlo estimate (costs that many network evaluations per step)
    clip_denoised: bool = True  # clip the predicted x0 to [-1, 1] at every step; keep it on for eps networks on the cosine schedule, whose x0 at t = T-1 (alpha_bar 2e-9) is unbounded (docs/results.md#what-limits-the-width-16-demo)
    num_samples: int = 64  # images generated by inference.py
    batch_size: int = 64  # images per network call
    seed: int = 0  # seed of the initial noise; sample i always gets the same noise stream; 0 to 2^32 - 1
    ema_length: float | None = None  # post-hoc EMA: sample with the EMA of this relative width, rebuilt from the run's snapshots (needs train.posthoc_ema); null: the train.ema_decay weights
    guidance_scale: float = 1.0  # classifier-free guidance S of conditional models: eps_uncond + S (eps_cond - eps_uncond); 1: plain conditional, 0: unconditional
    frames: int = 40  # frames of the denoising animation
    fps: int = 20  # frames per second of the animation


@dataclass
class LogConfig:
    root: str = "Models"  # parent folder of run folders
    run_name: str = ""  # run folder name; empty: <config file stem>-<timestamp>-<random suffix>
    log_every: int = 100  # TensorBoard scalars and progress-bar refresh every this many steps
    sample_every: int = 5000  # EMA sample grid to TensorBoard and samples/ every this many steps (0: never)
    sample_count: int = 16  # images in that grid
    sample_sampler: Literal["ddpm", "ddim", "dpm++", "dpm++sde"] = "dpm++"  # fast sampler for those grids
    sample_steps: int = 20  # its number of steps
    fid_every: int = 0  # FID of the EMA model every this many steps (0: never; needs the 'fid' extra)
    fid_samples: int = 1000  # samples per periodic FID


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    name: str = "config"  # stem of the file the config came from (default run names use it)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of Python scalars and lists (YAML- and weights_only-safe)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def conditional(self) -> bool:
        """Whether the model is conditioned on class labels (model.num_classes) or attributes."""
        return self.model.num_classes > 0 or bool(self.data.attributes)

    def preview_sampling(self, num_samples: int) -> SampleConfig:
        """The fast sampler of training-time grids and FIDs: ``log.sample_sampler`` in
        ``log.sample_steps`` steps, the rest of the ``sample`` section as it is, except that the
        analytic ddpm variance becomes beta_tilde (its estimate would cost a pass over the data)."""
        variance = "beta_tilde" if self.sample.ddpm_variance == "analytic" else self.sample.ddpm_variance
        return dataclasses.replace(
            self.sample, sampler=self.log.sample_sampler, steps=self.log.sample_steps, num_samples=num_samples,
            ddpm_variance=variance,
        )


def _section_types() -> dict[str, type]:
    """{section name: its dataclass}, in file order."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "name"}


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}[item]
    if _is_optional(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return f"{_describe(inner)} or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float only)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if _is_optional(tp):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # NaN passes every range check below, inf most of them
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config annotation {tp!r}")


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _build(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Validate a nested dict of sections and return {section: {field: typed value}}."""
    types_ = _section_types()
    out: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in types_:
            raise _unknown(section, list(types_), source)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys to values")
        hints = typing.get_type_hints(types_[section])
        for key, value in values.items():
            if key not in hints:
                raise _unknown(str(key), list(hints), f"{source}: {section}")
            out.setdefault(section, {})[key] = _coerce(value, hints[key], f"{source}: {section}.{key}")
    return out


def _parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected section.key=value, e.g. train.lr=1e-4")
    path, _, raw_value = text.partition("=")
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{text}': expected section.key=value, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return parts[0], parts[1], value


MAX_SEED = 2**32 - 1  # NumPy's seed range; every generator here takes it


def check_seed(seed: int, where: str) -> None:
    """A seed must be in [0, 2^32 - 1], so that every generator it seeds accepts it."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{where}: expected a seed from 0 to {MAX_SEED}, got {seed}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (by default the last wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}: duplicate key '{key}' at lines {seen[key]} and {line}")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def validate(cfg: Config, source: str = "config") -> Config:
    """Cross-field checks that the types alone cannot express."""
    positive = {
        "data.image_size": cfg.data.image_size,
        "model.image_size": cfg.model.image_size,
        "model.in_channels": cfg.model.in_channels,
        "model.base_channels": cfg.model.base_channels,
        "model.num_heads": cfg.model.num_heads,
        "model.norm_groups": cfg.model.norm_groups,
        "diffusion.timesteps": cfg.diffusion.timesteps,
        "train.batch_size": cfg.train.batch_size,
        "train.grad_accum": cfg.train.grad_accum,
        "train.ema_every": cfg.train.ema_every,
        "train.posthoc_every": cfg.train.posthoc_every,
        "train.checkpoint_every": cfg.train.checkpoint_every,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "log.log_every": cfg.log.log_every,
        "log.sample_count": cfg.log.sample_count,
        "log.sample_steps": cfg.log.sample_steps,
        "log.fid_samples": cfg.log.fid_samples,
    }
    non_negative = {
        "data.num_workers": cfg.data.num_workers,
        "model.num_res_blocks": cfg.model.num_res_blocks,
        "model.num_classes": cfg.model.num_classes,
        "train.steps": cfg.train.steps,
        "train.lr": cfg.train.lr,
        "train.warmup_steps": cfg.train.warmup_steps,
        "train.weight_decay": cfg.train.weight_decay,
        "train.grad_clip": cfg.train.grad_clip,
        "diffusion.min_snr_gamma": cfg.diffusion.min_snr_gamma,
        "log.sample_every": cfg.log.sample_every,
        "log.fid_every": cfg.log.fid_every,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: {key}: expected a positive value, got {value}")
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{source}: {key}: expected a value >= 0, got {value}")
    check_seed(cfg.train.seed, f"{source}: train.seed")
    check_sampling(cfg.sample, cfg.diffusion.timesteps, source)
    m = cfg.model
    if m.head_dim is not None and m.head_dim <= 0:
        raise ConfigError(f"{source}: model.head_dim: expected a positive integer or null, got {m.head_dim}")
    if not m.channel_mult or any(c <= 0 for c in m.channel_mult):
        raise ConfigError(f"{source}: model.channel_mult: expected a non-empty list of positive integers, got {m.channel_mult}")
    if m.image_size != cfg.data.image_size:
        raise ConfigError(f"{source}: model.image_size ({m.image_size}) must equal data.image_size ({cfg.data.image_size})")
    if m.image_size % 2 ** (len(m.channel_mult) - 1):
        raise ConfigError(
            f"{source}: model.image_size ({m.image_size}) must be divisible by 2^{len(m.channel_mult) - 1}"
            f" for {len(m.channel_mult)} levels (model.channel_mult)"
        )
    for mult in m.channel_mult:
        if (m.base_channels * mult) % m.norm_groups:
            raise ConfigError(
                f"{source}: model.norm_groups ({m.norm_groups}) must divide every level's channels"
                f" (base_channels * channel_mult = {m.base_channels} * {mult})"
            )
        channels = m.base_channels * mult
        if m.head_dim is not None and channels % m.head_dim:
            raise ConfigError(f"{source}: model.head_dim ({m.head_dim}) must divide every level's channels ({channels})")
        if m.head_dim is None and channels % m.num_heads:
            raise ConfigError(f"{source}: model.num_heads ({m.num_heads}) must divide every level's channels ({channels})")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"{source}: model.dropout: expected a value in [0, 1), got {m.dropout}")
    _validate_conditioning(cfg, source)
    if cfg.train.cuda_graphs and not cfg.train.compile:
        raise ConfigError(f"{source}: train.cuda_graphs=true needs train.compile=true (the graphs are recorded by torch.compile)")
    if not 0.0 <= cfg.train.lr_decay_start < 1.0:
        raise ConfigError(f"{source}: train.lr_decay_start: expected a fraction in [0, 1), got {cfg.train.lr_decay_start}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"{source}: train.ema_decay: expected a value in [0, 1), got {cfg.train.ema_decay}")
    for sigma_rel in cfg.train.posthoc_ema:
        gamma_from_sigma_rel(sigma_rel, f"{source}: train.posthoc_ema")
    if len(set(cfg.train.posthoc_ema)) != len(cfg.train.posthoc_ema):
        raise ConfigError(f"{source}: train.posthoc_ema: a width is listed twice in {cfg.train.posthoc_ema}")
    if len(cfg.train.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.train.adam_betas):
        raise ConfigError(f"{source}: train.adam_betas: expected two numbers in [0, 1), got {cfg.train.adam_betas}")
    d = cfg.diffusion
    if not 0.0 < d.beta_start < d.beta_end < 1.0:
        raise ConfigError(f"{source}: diffusion.beta_start/beta_end: expected 0 < beta_start < beta_end < 1, got {d.beta_start}, {d.beta_end}")
    if d.schedule == "linear" and d.beta_end * 1000 / d.timesteps >= 1.0:
        raise ConfigError(
            f"{source}: diffusion.timesteps ({d.timesteps}) is too small for the linear schedule: its betas are"
            f" scaled by 1000/T, so T must exceed 1000 * beta_end = {1000 * d.beta_end:g}"
        )
    if cfg.log.sample_steps > d.timesteps:
        raise ConfigError(f"{source}: log.sample_steps: {cfg.log.sample_steps} is more than diffusion.timesteps ({d.timesteps})")
    return cfg


def _validate_conditioning(cfg: Config, source: str) -> None:
    data, classes = cfg.data, cfg.model.num_classes
    if data.attributes:
        if data.source != "celeba":
            raise ConfigError(f"{source}: data.attributes: only data.source celeba has attributes, not '{data.source}'")
        if classes:
            raise ConfigError(f"{source}: model.num_classes ({classes}) and data.attributes: a model conditions on one of them")
        repeated = sorted({a for a in data.attributes if data.attributes.count(a) > 1})
        if repeated:
            raise ConfigError(f"{source}: data.attributes: '{repeated[0]}' is listed twice")
    elif classes and data.source == "celeba":
        raise ConfigError(f"{source}: model.num_classes: CelebA has no classes; condition on data.attributes instead")
    if data.class_names and len(data.class_names) != classes:
        raise ConfigError(
            f"{source}: data.class_names has {len(data.class_names)} names but model.num_classes is {classes}"
        )
    if not 0.0 <= cfg.train.cond_drop_prob < 1.0:
        raise ConfigError(f"{source}: train.cond_drop_prob: expected a value in [0, 1), got {cfg.train.cond_drop_prob}")


def check_sampling(options: SampleConfig, timesteps: int, source: str = "") -> None:
    """The one check of sampling options against a model's T, shared by config files,
    ``inference.py``'s flags (which override the ``sample`` section) and the notebooks."""
    where = f"{source}: " if source else ""
    for name in ("num_samples", "batch_size", "steps", "frames", "fps", "analytic_images"):
        value = getattr(options, name)
        if value < 1:
            raise ConfigError(f"{where}sample.{name}: expected a positive integer, got {value}")
    if options.steps > timesteps:
        raise ConfigError(f"{where}sample.steps: {options.steps} is more than diffusion.timesteps ({timesteps})")
    if not 0.0 <= options.eta <= 1.0:
        raise ConfigError(f"{where}sample.eta: expected a value in [0, 1], got {options.eta}")
    check_seed(options.seed, f"{where}sample.seed")
    if options.ema_length is not None:
        gamma_from_sigma_rel(options.ema_length, f"{where}sample.ema_length")


def from_dict(raw: dict[str, Any], source: str = "config", name: str = "config") -> Config:
    """Build and validate a :class:`Config` from a nested dict (e.g. one saved in a checkpoint)."""
    raw = dict(raw)
    name = str(raw.pop("name", name))
    sections = _build(raw, source)
    types_ = _section_types()
    cfg = Config(name=name, **{s: types_[s](**sections.get(s, {})) for s in types_})
    return validate(cfg, source)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``section.key=value`` overrides, and validate the result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            raw = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    raw.pop("name", None)
    sections = _build(raw, str(path))
    hints = _section_types()
    for text in overrides:
        section, key, value = _parse_override(text)
        where = f"override '{text}'"
        if section not in hints:
            raise _unknown(section, list(hints), where)
        fields = typing.get_type_hints(hints[section])
        if key not in fields:
            raise _unknown(key, list(fields), f"{where}: {section}")
        sections.setdefault(section, {})[key] = _coerce(value, fields[key], f"{where}: {section}.{key}")
    cfg = Config(name=path.stem, **{s: hints[s](**sections.get(s, {})) for s in hints})
    return validate(cfg, str(path))


def field_docs() -> list[tuple[str, str, Any, str]]:
    """(key path, type description, default, comment) for every config field, in file order."""
    import inspect
    import re

    rows = []
    for section, cls in _section_types().items():
        source = inspect.getsource(cls)
        comments = dict(re.findall(r"^\s+(\w+):.*?#\s*(.+)$", source, flags=re.M))
        defaults = cls()
        for f, tp in typing.get_type_hints(cls).items():
            rows.append((f"{section}.{f}", _describe(tp), getattr(defaults, f), comments.get(f, "")))
    return rows


def markdown_table() -> str:
    """The README's table of every config key, generated from the dataclasses above."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, comment in field_docs():
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        comment = comment.replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{key}` | {kind} | `{shown or chr(34) * 2}` | {comment} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m diffusion.config: print the config table for the README
    print(markdown_table())
