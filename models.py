"""The DDPM U-Net (Ho et al. appendix B): a Wide-ResNet U-Net with sinusoidal time embeddings.

``build_model(cfg)`` builds it from a config's ``model:`` section, for training and sampling
alike; ``model(x, t)`` maps images x (B, C, H, W) and integer timesteps t (B,) to a prediction of
the same shape as x.

A conditional network (``num_classes`` or ``num_attributes`` > 0) takes ``model(x, t, labels)``
and learns the conditional and the unconditional model at once (classifier-free guidance, Ho &
Salimans 2022): a learned label embedding is added to the time embedding, and a null token
stands for "no label". Class labels are (B,) indices in 0..num_classes, ``num_classes`` being the
null token; attribute labels are (B, A) values 0 (absent), 1 (present) or 2 (dropped), one
3-way embedding per attribute, summed. An unconditional network has no label parameters, so its
checkpoints are unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attention import SpatialSelfAttention, group_norm
from diffusion.errors import ConfigError

if TYPE_CHECKING:
    from diffusion.config import Config


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer position encoding of the timestep (Vaswani et al. sec. 3.5, as in Ho et al.).

    Returns (B, dim): [sin(t w_0) .. sin(t w_{h-1}), cos(t w_0) .. cos(t w_{h-1})] with
    w_i = max_period^(-i / (h - 1)), h = dim / 2.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, conditioned on the time embedding, with a residual connection."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, norm_groups: int, scale_shift: bool
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_ch, norm_groups, f"a residual block ({in_ch} -> {out_ch} channels)")
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = group_norm(out_ch, norm_groups, f"a residual block ({in_ch} -> {out_ch} channels)")
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(emb)[:, :, None, None]
        if self.scale_shift:  # improved-diffusion: norm(h) * (1 + scale) + shift
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm2(h), 1 + scale))
        else:  # Ho et al.: add a per-channel bias
            h = F.silu(self.norm2(h + e))
        return self.skip(x) + self.conv2(self.dropout(h))


class ResAttnBlock(nn.Module):
    """A residual block optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: SpatialSelfAttention | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


DownsamplePadding = Literal["symmetric", "tf_same"]


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution.

    ``padding``: ``symmetric`` pads one zero pixel on every side; ``tf_same`` is TensorFlow's
    'SAME' padding of a stride-2 convolution on an even size, one zero pixel on the right and
    bottom only, as in Ho et al.'s TensorFlow code and the weights they released.
    """

    def __init__(self, ch: int, padding: DownsamplePadding = "symmetric") -> None:
        super().__init__()
        if padding not in ("symmetric", "tf_same"):
            raise ValueError(f"model.downsample_padding: expected 'symmetric' or 'tf_same', got {padding!r}")
        self.tf_same = padding == "tf_same"
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0 if self.tf_same else 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.tf_same else x)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling by 2: each pixel of x (B, C, H, W) becomes a 2x2 block.

    ``F.interpolate``, except while torch.compile traces the network for a CUDA device: there
    inductor lowers interpolate's backward to a scatter-add, while the broadcast view gives the
    same values and a backward that is a fused sum per 2x2 block. Eager mode and inductor's CPU
    code are faster with ``F.interpolate`` (docs/results.md#upsampling-on-cuda).
    """
    if x.is_cuda and torch.compiler.is_compiling():
        return broadcast_nearest_2x(x)
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def broadcast_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """``upsample_nearest_2x`` as a broadcast view of x, copied once by the reshape."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_nearest_2x(x))


class UNet(nn.Module):
    """The DDPM U-Net. Keyword arguments are the keys of a config's ``model:`` section."""

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_mult: list[int] | tuple[int, ...] = (1, 2, 2, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: list[int] | tuple[int, ...] = (16,),
        num_heads: int = 1,
        head_dim: int | None = None,
        dropout: float = 0.1,
        norm_groups: int = 32,
        scale_shift: bool = False,
        downsample_padding: DownsamplePadding = "symmetric",
        num_classes: int = 0,
        num_attributes: int = 0,
    ) -> None:
        super().__init__()
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"model.image_size ({image_size}) must be divisible by 2^{len(channel_mult) - 1}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.num_classes = num_classes
        self.num_attributes = num_attributes
        emb_ch = 4 * base_channels
        if num_classes and num_attributes:
            raise ValueError("a network conditions on classes or on attributes, not both")
        # Index num_classes (classes) or value 2 (attributes) is the null token of Ho & Salimans.
        self.label_emb = (
            nn.Embedding(num_classes + 1, emb_ch) if num_classes
            else nn.Embedding(3 * num_attributes, emb_ch) if num_attributes
            else None
        )

        def block(cin: int, cout: int, res: int) -> ResAttnBlock:
            attn = (
                SpatialSelfAttention(cout, num_heads, head_dim, norm_groups) if res in attention_resolutions else None
            )
            return ResAttnBlock(ResBlock(cin, cout, emb_ch, dropout, norm_groups, scale_shift), attn)

        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Down path: every block's output is kept for a skip connection.
        self.down = nn.ModuleList()
        skip_chs = [base_channels]
        ch, res = base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * mult, res))
                ch = base_channels * mult
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(ch, downsample_padding))
                skip_chs.append(ch)
                res //= 2

        self.mid = nn.ModuleList([
            ResAttnBlock(
                ResBlock(ch, ch, emb_ch, dropout, norm_groups, scale_shift),
                SpatialSelfAttention(ch, num_heads, head_dim, norm_groups),
            ),
            ResAttnBlock(ResBlock(ch, ch, emb_ch, dropout, norm_groups, scale_shift), None),
        ])

        # Up path: each block concatenates one skip; each level but the last ends with an upsample.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_chs.pop(), base_channels * mult, res))
                ch = base_channels * mult
            if level != 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.norm_out = group_norm(ch, norm_groups, "the output block")
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def conditional(self) -> bool:
        return self.label_emb is not None

    @property
    def null_value(self) -> int:
        """The label value meaning "dropped": index num_classes for classes, 2 for attributes."""
        return self.num_classes if self.num_classes else 2

    def null_labels(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """Labels that condition on nothing: (B,) for classes, (B, A) for attributes."""
        shape = (batch, self.num_attributes) if self.num_attributes else (batch,)
        return torch.full(shape, self.null_value, dtype=torch.long, device=device)

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, emb) embedding of class labels (B,), or the sum over attributes of (B, A) labels."""
        assert self.label_emb is not None
        if self.num_attributes:
            offsets = 3 * torch.arange(self.num_attributes, device=labels.device)
            return self.label_emb(labels + offsets).sum(1)
        return self.label_emb(labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction for x_t at t; ``labels`` None means unconditioned (the null token)."""
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels).to(x.dtype))
        if self.label_emb is not None:
            if labels is None:
                labels = self.null_labels(x.shape[0], x.device)
            emb = emb + self.label_embedding(labels).to(emb.dtype)
        # The embedding goes through its SiLU once; each block applies only a Linear.
        emb = F.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for module in self.down:
            h = module(h, emb)
            skips.append(h)
        for module in self.mid:
            h = module(h, emb)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_model(cfg: Config) -> UNet:
    """The U-Net of ``cfg.model`` (conditioned on ``cfg.data.attributes`` when there are any); an
    architecture the network cannot build is a :class:`ConfigError`."""
    try:
        return UNet(**dataclasses.asdict(cfg.model), num_attributes=len(cfg.data.attributes))
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
