"""The U-Net and its attention: shapes, conditioning, gradients, the paper's parameter count."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

from attention import SpatialSelfAttention
from diffusion.config import from_dict as load_config_dict
from diffusion.config import load_config
from models import UNet, broadcast_nearest_2x, sinusoidal_embedding, upsample_nearest_2x

TINY = dict(image_size=8, in_channels=3, base_channels=16, channel_mult=[1, 2], num_res_blocks=1,
            attention_resolutions=[4], norm_groups=4, dropout=0.0)


@pytest.mark.parametrize("preset", ["digits", "ddpm_cifar10", "config"])
def test_preset_output_shapes(repo_root, preset):
    cfg = load_config(repo_root / "Configs" / f"{preset}.yaml")
    model = UNet(**cfg.to_dict()["model"]).eval()
    size, ch = cfg.model.image_size, cfg.model.in_channels
    for batch in (1, 3):
        x = torch.randn(batch, ch, size, size)
        with torch.no_grad():
            assert model(x, torch.randint(0, 1000, (batch,))).shape == x.shape


def test_ddpm_cifar10_has_the_papers_35_7m_parameters(repo_root):
    cfg = load_config(repo_root / "Configs" / "ddpm_cifar10.yaml")
    n = sum(p.numel() for p in UNet(**cfg.to_dict()["model"]).parameters())
    assert abs(n - 35.7e6) / 35.7e6 < 0.005, n


def test_output_is_zero_at_initialisation():
    """The output conv is zero-initialised, so an untrained model predicts zero."""
    model = UNet(**TINY)
    assert model(torch.randn(2, 3, 8, 8), torch.tensor([3, 700])).abs().max().item() == 0.0


def test_residual_blocks_start_as_identity():
    model = UNet(**TINY)
    block = model.down[0].res
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x, torch.randn(2, 64)), x)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_output_depends_on_t(scale_shift):
    model = randomize_(UNet(**TINY, scale_shift=scale_shift)).eval()
    x = torch.randn(1, 3, 8, 8).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([5, 900]))
    assert (out[0] - out[1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("scale_shift", [False, True])
def test_every_parameter_receives_a_gradient(scale_shift):
    model = randomize_(UNet(**TINY, scale_shift=scale_shift))
    model(torch.randn(3, 3, 8, 8), torch.tensor([0, 10, 999])).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name


def test_attention_is_placed_at_the_configured_resolutions():
    model = UNet(image_size=16, in_channels=1, base_channels=8, channel_mult=[1, 1, 1], num_res_blocks=1,
                 attention_resolutions=[8], norm_groups=4)
    down = [m.attn is not None for m in model.down if hasattr(m, "attn")]
    assert down == [False, True, False]  # resolutions 16, 8, 4
    up = [m.attn is not None for m in model.up if hasattr(m, "attn")]
    assert up == [False, False, True, True, False, False]  # 4, 4, 8, 8, 16, 16
    assert model.mid[0].attn is not None


@pytest.mark.parametrize("heads, head_dim, expected", [(1, None, 1), (4, None, 4), (4, 16, 2)])
def test_attention_heads_and_scale_shift_reach_every_block(heads, head_dim, expected):
    scale_shift = heads > 1
    model = UNet(**TINY, num_heads=heads, head_dim=head_dim, scale_shift=scale_shift)  # 32 channels at 4x4
    attention = [m for m in model.modules() if isinstance(m, SpatialSelfAttention)]
    assert attention and all(a.num_heads == expected for a in attention)  # head_dim wins over heads
    blocks = [m for m in model.modules() if hasattr(m, "emb_proj")]
    assert blocks and all(b.emb_proj.out_features == (2 if scale_shift else 1) * b.conv2.out_channels for b in blocks)


def test_dropout_is_active_in_train_mode_only():
    model = randomize_(UNet(**{**TINY, "dropout": 0.5}))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    model.train()
    assert not torch.equal(model(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))


def test_norm_groups_that_do_not_divide_are_named():
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(**{**TINY, "norm_groups": 5})


def test_sinusoidal_embedding_closed_form():
    t = torch.tensor([0, 1, 37, 999])
    emb = sinusoidal_embedding(t, 16)
    half = 8
    for row, tv in enumerate(t.tolist()):
        for i in range(half):
            w = 10_000 ** (-i / (half - 1))
            assert emb[row, i].item() == pytest.approx(math.sin(tv * w), abs=1e-4)
            assert emb[row, half + i].item() == pytest.approx(math.cos(tv * w), abs=1e-4)


@pytest.mark.parametrize("heads,head_dim", [(1, None), (4, None), (1, 8)])
def test_attention_equals_naive_softmax_reference(heads, head_dim):
    torch.manual_seed(0)
    c, h, w = 32, 4, 5
    attn = randomize_(SpatialSelfAttention(c, num_heads=heads, head_dim=head_dim, norm_groups=8)).double()
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    n_heads = c // head_dim if head_dim else heads
    d = c // n_heads
    # Reference: tokens = pixels; per head softmax(Q K^T / sqrt(d)) V; then the output projection.
    normed = torch.nn.functional.group_norm(x, 8, attn.norm.weight, attn.norm.bias, attn.norm.eps)
    tokens = normed.flatten(2).transpose(1, 2)  # (B, HW, C)
    w_qkv = attn.qkv.weight.reshape(3 * c, c)
    q, k, v = (tokens @ w_qkv.T + attn.qkv.bias).split(c, dim=-1)
    outs = []
    for i in range(n_heads):
        sl = slice(i * d, (i + 1) * d)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(weights @ v[..., sl])
    out = torch.cat(outs, dim=-1) @ attn.proj.weight.reshape(c, c).T + attn.proj.bias
    expected = x + out.transpose(1, 2).reshape(2, c, h, w)
    torch.testing.assert_close(attn(x), expected, rtol=1e-9, atol=1e-9)


def test_broadcast_upsampling_is_nearest_neighbour_with_the_same_gradient():
    """The form torch.compile traces on CUDA (its backward a sum per 2x2 block) equals
    F.interpolate in values and gradients; eager mode uses interpolate itself."""
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    weights = torch.randn(2, 3, 8, 10)
    eager = F.interpolate(x, scale_factor=2.0, mode="nearest")
    broadcast = broadcast_nearest_2x(x)
    assert torch.equal(broadcast, eager) and torch.equal(upsample_nearest_2x(x), eager)
    (grad,) = torch.autograd.grad((broadcast * weights).sum(), x)
    (eager_grad,) = torch.autograd.grad((eager * weights).sum(), x)
    torch.testing.assert_close(grad, eager_grad)


def test_tf_same_downsampling_pads_right_and_bottom_only():
    """TensorFlow 'SAME' at stride 2 on an even size: output (i, j) is the 3x3 window at input
    (2i, 2j), zeros past the right and bottom edges; symmetric padding centres it on (2i, 2j)."""
    down = randomize_(UNet(**TINY, downsample_padding="tf_same")).down[1]
    x = torch.randn(2, 16, 8, 8)
    w, b = down.conv.weight, down.conv.bias
    padded = torch.zeros(2, 16, 9, 9)
    padded[:, :, :8, :8] = x
    expected = torch.stack([
        torch.stack([torch.einsum("bchw,ochw->bo", padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w) + b for j in range(4)], -1)
        for i in range(4)
    ], -2)
    torch.testing.assert_close(down(x, None), expected)
    symmetric = UNet(**TINY).down[1]
    symmetric.load_state_dict(down.state_dict())
    assert (symmetric(x, None) - expected).abs().max() > 1e-2


def test_checkpoints_without_downsample_padding_keep_their_outputs():
    """Configs written before model.downsample_padding existed load as 'symmetric', the old behaviour."""
    cfg = load_config_dict({"data": {"image_size": 8}, "model": TINY})
    assert cfg.model.downsample_padding == "symmetric"
    old, new = randomize_(UNet(**TINY)), UNet(**dataclasses.asdict(cfg.model))
    new.load_state_dict(old.state_dict())
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 500])
    assert torch.equal(old.eval()(x, t), new.eval()(x, t))
