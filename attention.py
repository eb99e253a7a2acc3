"""Multi-head self-attention over the spatial positions of a feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int, where: str) -> nn.GroupNorm:
    """GroupNorm that says which block is misconfigured when ``groups`` does not divide ``channels``."""
    if channels % groups:
        raise ValueError(
            f"model.norm_groups ({groups}) must divide the {channels} channels of {where}; "
            f"choose norm_groups dividing base_channels * every channel_mult"
        )
    return nn.GroupNorm(groups, channels, eps=1e-6)


class SpatialSelfAttention(nn.Module):
    """x + proj(MHA(GroupNorm(x))) with one token per pixel (Ho et al. appendix B, Vaswani et al.).

    The softmax(QK^T / sqrt(d)) V product runs through ``F.scaled_dot_product_attention``, so
    fused flash / memory-efficient kernels are used where the device has them.
    """

    def __init__(self, channels: int, num_heads: int = 1, head_dim: int | None = None, norm_groups: int = 32) -> None:
        super().__init__()
        if head_dim is not None:
            if channels % head_dim:
                raise ValueError(f"model.head_dim ({head_dim}) must divide the {channels} channels of an attention block")
            num_heads = channels // head_dim
        if channels % num_heads:
            raise ValueError(f"model.num_heads ({num_heads}) must divide the {channels} channels of an attention block")
        self.num_heads = num_heads
        self.norm = group_norm(channels, norm_groups, f"an attention block ({channels} channels)")
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        # One token per pixel: (B, C, H, W) -> (B, HW, C), a view for channels-last x.
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        # (B, HW, 3C) -> 3 x (B, heads, HW, d), channels contiguous as the fused SDPA kernels need.
        q, k, v = self.qkv(tokens).unflatten(-1, (3, heads, c // heads)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, HW, C)
        return x + out.transpose(1, 2).unflatten(2, (h, w))  # the sum keeps x's memory format
