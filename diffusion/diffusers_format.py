"""Translation between our configs and weights and diffusers' ``UNet2DModel`` + ``DDPMScheduler``.

Pure functions on dicts and tensors (no files, no diffusers import). The DDPM family of
``UNet2DModel`` configs (Ho et al.'s released weights: positional time embedding without the
sin/cos flip and with ``freq_shift: 1``, ``DownBlock2D`` / ``AttnDownBlock2D`` levels, GroupNorm
eps 1e-6, SiLU) is our U-Net up to parameter names and the downsampling padding; everything else
is refused with one line naming the field and its value (:class:`ConversionError`), never
approximated.

Parameter names: our ``down``/``up`` lists hold a level's residual(+attention) blocks followed by
its resampler, where diffusers nests them as ``down_blocks.<level>.resnets.<j>`` /
``.attentions.<j>`` / ``.downsamplers.0``. Our attention's ``qkv`` Linear is diffusers' ``to_q``,
``to_k``, ``to_v`` stacked; uploads from diffusers before 0.14 name them ``query``, ``key``,
``value`` and ``proj_attn`` (for ``to_out.0``), and both spellings are read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from diffusion.config import (
    Config,
    ConfigError,
    DiffusionConfig,
    LogConfig,
    ModelConfig,
    SampleConfig,
    from_dict,
)
from diffusion.errors import CheckpointError
from models import UNet

FORMAT_VERSION = "0.30.0"  # the diffusers version whose file layout export writes (_diffusers_version)
NORM_EPS = 1e-6  # our GroupNorm eps (attention.group_norm), Ho et al.'s TensorFlow default

ATTENTION_NAMES = {  # our parameter -> (current diffusers name, pre-0.14 name)
    "norm": ("group_norm", "group_norm"),
    "proj": ("to_out.0", "proj_attn"),
}
QKV_NAMES = (("to_q", "query"), ("to_k", "key"), ("to_v", "value"))
RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
                "conv2": "conv2", "skip": "conv_shortcut"}

# UNet2DModel.__init__ defaults, used for keys a config.json leaves out (as diffusers does).
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}
# DDPMScheduler.__init__ defaults. timestep_spacing, steps_offset and the thresholding values only
# shape diffusers' own inference loop: our samplers choose their timesteps themselves.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0,
    "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}
OBJECTIVES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_large": "beta", "fixed_large_log": "beta", "fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde"}


class ConversionError(CheckpointError):
    """A diffusers config or weight file that our U-Net or schedule cannot reproduce exactly."""


# Configs ------------------------------------------------------------------------------------


def _refuse(where: str, key: str, value: Any, expected: str) -> ConversionError:
    return ConversionError(f"{where}: {key}={value!r} does not map to this U-Net (supported: {expected})")


def model_section(unet: dict[str, Any], where: str) -> dict[str, Any]:
    """Our ``model:`` section for a ``UNet2DModel`` config.json (``where`` names it in errors)."""
    if unet.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _refuse(where, "_class_name", unet["_class_name"], "'UNet2DModel'")
    c = {**UNET_DEFAULTS, **{k: v for k, v in unet.items() if not k.startswith("_")}}
    unknown = sorted(set(c) - set(UNET_DEFAULTS))
    if unknown:
        raise _refuse(where, unknown[0], c[unknown[0]], "the keys of diffusers' UNet2DModel")
    fixed = {"center_input_sample": False, "time_embedding_type": "positional", "flip_sin_to_cos": False,
             "freq_shift": 1, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
             "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu", "norm_eps": NORM_EPS,
             "add_attention": True, "class_embed_type": None, "num_class_embeds": None}
    for key, value in fixed.items():
        if c[key] != value:
            raise _refuse(where, key, c[key], repr(value))
    widths = list(c["block_out_channels"])
    if c["time_embedding_dim"] not in (None, 4 * widths[0]):
        raise _refuse(where, "time_embedding_dim", c["time_embedding_dim"], f"null or {4 * widths[0]}")
    if c["out_channels"] != c["in_channels"]:
        raise _refuse(where, "out_channels", c["out_channels"], f"in_channels ({c['in_channels']})")
    if any(w % widths[0] for w in widths):
        raise _refuse(where, "block_out_channels", widths, "multiples of the first width")
    padding = {0: "tf_same", 1: "symmetric"}.get(c["downsample_padding"])
    if padding is None:
        raise _refuse(where, "downsample_padding", c["downsample_padding"], "0 or 1")
    size = c["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int):
        raise _refuse(where, "sample_size", c["sample_size"], "a square size in pixels")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if len(down) != len(widths):
        raise _refuse(where, "down_block_types", down, f"one block per block_out_channels entry ({len(widths)})")
    for kind in down:
        if kind not in ("DownBlock2D", "AttnDownBlock2D"):
            raise _refuse(where, "down_block_types", down, "DownBlock2D and AttnDownBlock2D")
    mirrored = [kind.replace("Down", "Up") for kind in reversed(down)]
    if up != mirrored:
        raise _refuse(where, "up_block_types", up, f"the down blocks mirrored, {mirrored}")
    attention_levels = [level for level, kind in enumerate(down) if kind == "AttnDownBlock2D"]
    scale_shift = {"default": False, "scale_shift": True}.get(c["resnet_time_scale_shift"])
    if scale_shift is None:
        raise _refuse(where, "resnet_time_scale_shift", c["resnet_time_scale_shift"], "'default' or 'scale_shift'")
    # diffusers' mid-block attention has a GroupNorm only with 'default' or an explicit group count.
    mid_groups = c["attn_norm_num_groups"] if c["attn_norm_num_groups"] is not None else (None if scale_shift else c["norm_num_groups"])
    if mid_groups != c["norm_num_groups"]:
        raise _refuse(where, "attn_norm_num_groups", c["attn_norm_num_groups"], f"norm_num_groups ({c['norm_num_groups']})")
    num_heads, head_dim = 1, c["attention_head_dim"]
    attention_widths = {widths[level] for level in attention_levels} | {widths[-1]}
    if head_dim is None or attention_widths == {head_dim}:
        head_dim = None  # one head per attention block (diffusers: head width = block width)
    elif any(w % head_dim for w in attention_widths):
        raise _refuse(where, "attention_head_dim", head_dim, f"a divisor of the attention widths {sorted(attention_widths)}")
    return {
        "image_size": size,
        "in_channels": c["in_channels"],
        "base_channels": widths[0],
        "channel_mult": [w // widths[0] for w in widths],
        "num_res_blocks": c["layers_per_block"],
        "attention_resolutions": [size // 2**level for level in attention_levels],
        "num_heads": num_heads,
        "head_dim": head_dim,
        "dropout": float(c["dropout"]),
        "norm_groups": c["norm_num_groups"],
        "scale_shift": scale_shift,
        "downsample_padding": padding,
    }


def schedule_sections(scheduler: dict[str, Any] | None, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our ``diffusion:`` and ``sample:`` sections for a ``DDPMScheduler`` config (``None``: its defaults)."""
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in (scheduler or {}).items() if not k.startswith("_")}}
    name = (scheduler or {}).get("_class_name", "DDPMScheduler")
    if name != "DDPMScheduler":
        raise _refuse(where, "_class_name", name, "'DDPMScheduler'")
    unknown = sorted(set(c) - set(SCHEDULER_DEFAULTS))
    if unknown:
        raise _refuse(where, unknown[0], c[unknown[0]], "the keys of diffusers' DDPMScheduler")
    for key, value in {"trained_betas": None, "thresholding": False, "clip_sample_range": 1.0,
                       "rescale_betas_zero_snr": False}.items():
        if c[key] != value:
            raise _refuse(where, key, c[key], repr(value))
    timesteps = c["num_train_timesteps"]
    diffusion: dict[str, Any] = {"timesteps": timesteps}
    if c["beta_schedule"] == "linear":
        # diffusers' betas are linspace(beta_start, beta_end, T); ours scale the end points by 1000/T.
        diffusion.update(schedule="linear", beta_start=c["beta_start"] * timesteps / 1000,
                         beta_end=c["beta_end"] * timesteps / 1000)
    elif c["beta_schedule"] == "squaredcos_cap_v2":  # Nichol & Dhariwal eq. 17, as our cosine_betas
        diffusion["schedule"] = "cosine"
    else:
        raise _refuse(where, "beta_schedule", c["beta_schedule"], "'linear' or 'squaredcos_cap_v2'")
    if c["prediction_type"] not in OBJECTIVES:
        raise _refuse(where, "prediction_type", c["prediction_type"], ", ".join(OBJECTIVES))
    diffusion["objective"] = OBJECTIVES[c["prediction_type"]]
    if c["variance_type"] not in VARIANCES:
        raise _refuse(where, "variance_type", c["variance_type"], ", ".join(VARIANCES) + " (a learned variance is not)")
    sample = {"ddpm_variance": VARIANCES[c["variance_type"]], "clip_denoised": bool(c["clip_sample"])}
    return diffusion, sample


def unet_config(m: ModelConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` config.json of our ``model:`` section; a :class:`ConversionError` for
    what diffusers cannot express."""
    widths = [m.base_channels * k for k in m.channel_mult]
    sizes = [m.image_size // 2**level for level in range(len(widths))]
    attention_widths = sorted({w for w, s in zip(widths, sizes, strict=True) if s in m.attention_resolutions} | {widths[-1]})
    if m.head_dim is not None:
        head_dim = m.head_dim
    elif m.num_heads == 1:
        head_dim = None  # one head per attention block, as the paper's configs say it
    elif len(attention_widths) == 1:
        head_dim = attention_widths[0] // m.num_heads
    else:
        raise ConversionError(
            f"model.num_heads={m.num_heads} gives heads of different widths in attention blocks of"
            f" {attention_widths} channels; diffusers has one attention_head_dim: set model.head_dim instead"
        )
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": FORMAT_VERSION,
        **{k: v for k, v in UNET_DEFAULTS.items() if k not in ("num_train_timesteps", "time_embedding_dim")},
        "sample_size": m.image_size,
        "in_channels": m.in_channels,
        "out_channels": m.in_channels,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if s in m.attention_resolutions else "DownBlock2D" for s in sizes],
        "up_block_types": ["AttnUpBlock2D" if s in m.attention_resolutions else "UpBlock2D" for s in reversed(sizes)],
        "block_out_channels": widths,
        "layers_per_block": m.num_res_blocks,
        "downsample_padding": 0 if m.downsample_padding == "tf_same" else 1,
        "dropout": m.dropout,
        "attention_head_dim": head_dim,
        "norm_num_groups": m.norm_groups,
        "attn_norm_num_groups": m.norm_groups,
        "norm_eps": NORM_EPS,
        "resnet_time_scale_shift": "scale_shift" if m.scale_shift else "default",
    }


def scheduler_config(d: DiffusionConfig, s: SampleConfig) -> dict[str, Any]:
    """The ``DDPMScheduler`` scheduler_config.json of our ``diffusion:`` and ``sample:`` sections
    (the analytic ddpm variance, which diffusers lacks, becomes its lower bound beta_tilde)."""
    config = {"_class_name": "DDPMScheduler", "_diffusers_version": FORMAT_VERSION, **SCHEDULER_DEFAULTS,
              "num_train_timesteps": d.timesteps,
              "variance_type": "fixed_large" if s.ddpm_variance == "beta" else "fixed_small",
              "clip_sample": s.clip_denoised,
              "prediction_type": {ours: theirs for theirs, ours in OBJECTIVES.items()}[d.objective]}
    if d.schedule == "linear":
        config.update(beta_schedule="linear", beta_start=d.beta_start * 1000 / d.timesteps,
                      beta_end=d.beta_end * 1000 / d.timesteps)
    else:
        config["beta_schedule"] = "squaredcos_cap_v2"
    return config


def imported_config(unet: dict[str, Any], scheduler: dict[str, Any] | None, name: str, where: dict[str, str]) -> Config:
    """A full :class:`Config` for a diffusers UNet (+ scheduler); ``where`` names the two files."""
    model = model_section(unet, where["unet"])
    diffusion, sample = schedule_sections(scheduler, where["scheduler"])
    steps = diffusion["timesteps"]
    raw = {
        "data": {"image_size": model["image_size"], "source": "folder"},
        "model": model,
        "diffusion": diffusion,
        "sample": {**sample, "steps": min(SampleConfig.steps, steps)},
        "log": {"sample_steps": min(LogConfig.sample_steps, steps)},
    }
    try:
        return from_dict(raw, source=where["unet"], name=name)
    except ConfigError as err:  # e.g. betas that our schedule's checks refuse
        raise ConversionError(str(err)) from None


# Weights ------------------------------------------------------------------------------------


def _module_pairs(m: ModelConfig) -> Iterator[tuple[str, str, str]]:
    """(our module prefix, diffusers module prefix, kind) with kind 'plain', 'resnet' or 'attention'."""
    yield "time_mlp.0", "time_embedding.linear_1", "plain"
    yield "time_mlp.2", "time_embedding.linear_2", "plain"
    yield "conv_in", "conv_in", "plain"
    sizes = [m.image_size // 2**level for level in range(len(m.channel_mult))]
    i = 0
    for level, size in enumerate(sizes):
        for j in range(m.num_res_blocks):
            yield f"down.{i}.res", f"down_blocks.{level}.resnets.{j}", "resnet"
            if size in m.attention_resolutions:
                yield f"down.{i}.attn", f"down_blocks.{level}.attentions.{j}", "attention"
            i += 1
        if level != len(sizes) - 1:
            yield f"down.{i}.conv", f"down_blocks.{level}.downsamplers.0.conv", "plain"
            i += 1
    yield "mid.0.res", "mid_block.resnets.0", "resnet"
    yield "mid.0.attn", "mid_block.attentions.0", "attention"
    yield "mid.1.res", "mid_block.resnets.1", "resnet"
    i = 0
    for block, size in enumerate(reversed(sizes)):
        for j in range(m.num_res_blocks + 1):
            yield f"up.{i}.res", f"up_blocks.{block}.resnets.{j}", "resnet"
            if size in m.attention_resolutions:
                yield f"up.{i}.attn", f"up_blocks.{block}.attentions.{j}", "attention"
            i += 1
        if block != len(sizes) - 1:
            yield f"up.{i}.conv", f"up_blocks.{block}.upsamplers.0.conv", "plain"
            i += 1
    yield "norm_out", "conv_norm_out", "plain"
    yield "conv_out", "conv_out", "plain"


def _param_pairs(m: ModelConfig) -> Iterator[tuple[str, list[tuple[str, ...]]]]:
    """(our parameter name, diffusers names) for every parameter of ``UNet(**m)``, where each
    diffusers entry lists the accepted spellings of one tensor; several entries are stacked along
    dim 0 (the qkv projection). The first spelling is the current one."""
    with torch.device("meta"):  # parameter names without allocating or initialising weights
        names = set(UNet(**dataclasses.asdict(m)).state_dict())
    for name, sources in _all_param_pairs(m):
        if name in names:
            yield name, sources


def _all_param_pairs(m: ModelConfig) -> Iterator[tuple[str, list[tuple[str, ...]]]]:
    for ours, theirs, kind in _module_pairs(m):
        for p in ("weight", "bias"):
            if kind == "plain":
                yield f"{ours}.{p}", [(f"{theirs}.{p}",)]
            elif kind == "resnet":
                for a, b in RESNET_NAMES.items():
                    yield f"{ours}.{a}.{p}", [(f"{theirs}.{b}.{p}",)]
            else:
                for a, names in ATTENTION_NAMES.items():
                    yield f"{ours}.{a}.{p}", [tuple(dict.fromkeys(f"{theirs}.{n}.{p}" for n in names))]
                yield f"{ours}.qkv.{p}", [tuple(f"{theirs}.{n}.{p}" for n in pair) for pair in QKV_NAMES]


def from_diffusers(weights: dict[str, torch.Tensor], m: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """Our state dict (float32) from a ``UNet2DModel`` state dict with current or pre-0.14 names."""
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, sources in _param_pairs(m):
        parts = []
        for spellings in sources:
            found = [s for s in spellings if s in weights]
            if len(found) > 1:
                raise ConversionError(f"{where}: holds the same tensor under its old and new names, {found[0]} and {found[1]}")
            if not found:
                raise ConversionError(f"{where}: has no {' or '.join(spellings)} (for our {name})")
            used.add(found[0])
            parts.append(weights[found[0]].float())
        ours[name] = torch.cat(parts) if len(parts) > 1 else parts[0]
    unexpected = [k for k in weights if k not in used]
    if unexpected:
        raise ConversionError(f"{where}: {len(unexpected)} tensors that this U-Net has no place for (first: {unexpected[0]})")
    return ours


def to_diffusers(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel`` state dict (current names, contiguous) from our state dict."""
    theirs: dict[str, torch.Tensor] = {}
    for name, targets in _param_pairs(m):
        chunks = state[name].chunk(len(targets)) if len(targets) > 1 else [state[name]]
        for spellings, chunk in zip(targets, chunks, strict=True):
            theirs[spellings[0]] = chunk.detach().contiguous()
    return theirs
