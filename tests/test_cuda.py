"""CUDA-only checks (skipped without a GPU; ``benchmarks/gpu.sh`` runs them): mixed-precision
training steps stay finite, the network and a sampler from the same x_T give the same result on
the GPU as on the CPU, fused SDPA attention equals the naive softmax(QK^T / sqrt(d)) V
reference, and the compiled network (CUDA graphs, channels-last graph, the broadcast upsampling)
equals the eager one.
TF32 is off (the ``exact_fp32`` fixture): fp32 on the GPU is compared with the CPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

from attention import SpatialSelfAttention
from diffusion.device import compile_network
from diffusion.samplers import reverse_process
from diffusion.schedule import NoiseSchedule
from models import UNet

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("exact_fp32"),
]

TINY = dict(image_size=16, in_channels=3, base_channels=32, channel_mult=[1, 2], num_res_blocks=1,
            attention_resolutions=[8], norm_groups=8, dropout=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_training_steps_are_finite(dtype):
    torch.manual_seed(0)
    model = UNet(**TINY).cuda()
    schedule = NoiseSchedule(timesteps=1000).to("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    before = copy.deepcopy(model.state_dict())
    x0 = torch.rand(8, 3, 16, 16, device="cuda") * 2 - 1
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = schedule.training_loss(model, x0)
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    for name, p in model.state_dict().items():
        assert torch.isfinite(p).all(), name
    assert any(not torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_network_and_sampler_on_gpu_match_the_cpu():
    model = randomize_(UNet(**TINY), scale=0.05).eval()
    schedule = NoiseSchedule(timesteps=1000)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 500, 999])
    with torch.inference_mode():
        cpu_out = model(x, t)
        gpu_out = copy.deepcopy(model).cuda()(x.cuda(), t.cuda()).cpu()
    torch.testing.assert_close(gpu_out, cpu_out, rtol=1e-4, atol=1e-4)

    # The CPU and CUDA generators draw different numbers from one seed, so both devices start
    # from the same x_T, and deterministic DDIM (eta = 0) draws nothing else.
    x_T = torch.randn(4, 3, 16, 16)
    finals = [
        list(reverse_process(net, schedule, lambda d=device: x_T.to(d), sampler="ddim", steps=10))[-1].x.cpu()
        for net, device in ((model, "cpu"), (copy.deepcopy(model).cuda(), "cuda"))
    ]
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads", [1, 4])
def test_sdpa_attention_equals_the_naive_reference(dtype, tol, heads):
    torch.manual_seed(0)
    c, side = 64, 8
    attn = randomize_(SpatialSelfAttention(c, num_heads=heads, norm_groups=8), scale=0.05).cuda()
    x = torch.randn(2, c, side, side, device="cuda")
    d = c // heads
    tokens = F.group_norm(x, 8, attn.norm.weight, attn.norm.bias, attn.norm.eps).flatten(2).transpose(1, 2)
    q, k, v = (tokens @ attn.qkv.weight.reshape(3 * c, c).T + attn.qkv.bias).split(c, dim=-1)
    heads_out = [
        torch.softmax(q[..., i * d:(i + 1) * d] @ k[..., i * d:(i + 1) * d].transpose(1, 2) / math.sqrt(d), dim=-1)
        @ v[..., i * d:(i + 1) * d]
        for i in range(heads)
    ]
    out = torch.cat(heads_out, dim=-1) @ attn.proj.weight.reshape(c, c).T + attn.proj.bias
    expected = x + out.transpose(1, 2).reshape(x.shape)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        actual = attn(x)
    torch.testing.assert_close(actual.float(), expected, rtol=tol, atol=tol)


def test_compiled_network_with_cuda_graphs_and_channels_last_graph_matches_eager():
    """compile_network's CUDA options (CUDA graphs, channels-last activations inside the graph)
    change neither the network's output nor its gradients."""
    model = randomize_(UNet(**TINY), scale=0.05).cuda()
    net = compile_network(model, torch.device("cuda"))
    x, t = torch.randn(4, 3, 16, 16, device="cuda"), torch.tensor([0, 10, 500, 999], device="cuda")
    params = list(model.parameters())
    for _ in range(3):  # the first calls record the CUDA graphs, the last one replays them
        compiled_grads = torch.autograd.grad(net(x, t).square().mean(), params)
    eager_grads = torch.autograd.grad(model(x, t).square().mean(), params)
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-5)
    model.eval()
    with torch.inference_mode():
        expected = model(x, t)
        for _ in range(3):
            out = net(x, t).clone()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
