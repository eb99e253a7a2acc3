"""Device and precision names: what auto picks, this process's GPU under torchrun, and one-line
errors naming the setting. CUDA is faked where a test needs it (torch.device needs no GPU)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
from conftest import subprocess_env

import diffusion.device
from diffusion.device import (
    PRECISIONS,
    autocast_dtype,
    compile_network,
    cpu_has_bf16,
    cpu_sampling_layout,
    precision_name,
    resolve_device,
    tune_host_allocator,
)
from diffusion.errors import UserError


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA devices that support bf16, as far as these functions can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_prefers_cuda_and_a_bare_cuda_is_this_processes_gpu(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", "train.device", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)  # an explicit index wins
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^--device: 'cuda:2' requested but this machine has 2 CUDA device\(s\)$"):
        resolve_device("cuda:2", "--device")


def test_auto_falls_back_to_cpu_and_missing_devices_are_one_line_errors(no_accelerator):
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^train\.device: 'cuda' requested but CUDA is not available on this machine; use cpu$"):
        resolve_device("cuda", "train.device")
    with pytest.raises(UserError, match=r"^--device: 'mps' requested but MPS is not available on this machine; use cpu$"):
        resolve_device("mps", "--device")


@pytest.mark.parametrize("name", ["tpu", "meta", "cuda:x", ""])
def test_unknown_device_names_are_one_line_errors(name):
    with pytest.raises(UserError) as err:
        resolve_device(name, "--device")
    assert str(err.value) == f"--device: expected auto, cpu, cuda, cuda:N or mps, got '{name}'"


def test_autocast_dtypes_and_their_names(two_gpus):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", gpu) == torch.bfloat16
    assert [autocast_dtype(p, cpu) for p in ("fp32", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]
    assert [precision_name(autocast_dtype(p, cpu)) for p in PRECISIONS] == ["fp32", "fp32", "bf16", "fp16"]
    with pytest.raises(UserError, match=r"^--precision: expected one of auto, fp32, bf16, fp16, got 'fp8'$"):
        autocast_dtype("fp8", cpu, "--precision")


def test_cpu_bf16_detection_follows_the_instruction_set(monkeypatch):
    """x86: AVX-512 BF16 or AMX; other architectures: what oneDNN reports."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for avx512_bf16, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert cpu_has_bf16() is expected
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_has_bf16() == torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize("native", [True, False])
def test_auto_samples_in_bf16_on_cpus_with_native_bf16_and_trains_in_fp32(native, monkeypatch):
    monkeypatch.setattr(diffusion.device, "cpu_has_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu, sampling=True) == (torch.bfloat16 if native else None)
    assert autocast_dtype("auto", cpu) is None  # training
    assert autocast_dtype("fp32", cpu, sampling=True) is None  # an explicit precision wins


def test_cpu_sampling_layout_is_channels_last_in_fp32_and_on_amx(monkeypatch):
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert cpu_sampling_layout(None) == torch.channels_last
        assert cpu_sampling_layout(torch.bfloat16) == (torch.channels_last if amx else torch.contiguous_format)


MALLINFO2 = (  # glibc >= 2.33: struct mallinfo2 has ten size_t fields; hblkhd is the 5th
    "import ctypes, sys, torch\n"
    "from diffusion.device import tune_host_allocator\n"
    "class Info(ctypes.Structure):\n"
    "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks"
    " fordblks keepcost').split()]\n"
    "mallinfo2 = ctypes.CDLL(None).mallinfo2\n"
    "mallinfo2.restype = Info\n"
    "applied = sys.argv[1] == 'kept' and tune_host_allocator(torch.device('cpu'))\n"
    "before = mallinfo2()\n"
    "tensor = torch.ones(6 << 20)\n"  # 24 MiB
    "mapped = mallinfo2().hblkhd - before.hblkhd\n"
    "heap = mallinfo2().arena\n"
    "del tensor\n"
    "print(applied, mapped >> 20, (heap - mallinfo2().arena) >> 20)\n"
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_kept_host_memory_serves_large_tensors_from_the_heap_and_keeps_them(repo_root):
    """glibc maps a 24 MiB tensor separately and unmaps it when freed (every page faults in anew
    next time); after tune_host_allocator it comes from the heap, which keeps it after the free.
    Each setting runs in a fresh process: the allocator is process-wide."""
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2")
    results = {}
    for setting in ("default", "kept"):
        out = subprocess.run([sys.executable, "-c", MALLINFO2, setting], capture_output=True, text=True, check=True,
                             cwd=repo_root, env=subprocess_env()).stdout.split()
        results[setting] = (out[0] == "True", int(out[1]), int(out[2]))
    # (applied, MiB mapped separately for the tensor, MiB the heap shrank when it was freed)
    assert results["default"] == (False, 24, 0)
    assert results["kept"] == (True, 0, 0)


def test_host_allocator_is_left_alone_for_gpu_work():
    assert tune_host_allocator(torch.device("cuda", 0)) is False
    assert tune_host_allocator(torch.device("mps")) is False


def test_bf16_on_a_gpu_without_it_is_a_one_line_error(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(UserError, match=r"^train\.precision: this GPU has no bf16 support; use fp16 or fp32$"):
        autocast_dtype("auto", torch.device("cuda", 0), "train.precision")
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # CPU autocast has bf16


def test_compile_network_options_per_device(monkeypatch):
    for graphs in (True, False):  # inductor knows the options (it checks names and types when wrapping)
        compile_network(torch.nn.Linear(2, 2), torch.device("cuda"), graphs, not graphs)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options) or model)
    net = torch.nn.Linear(2, 2)
    for device, cuda_graphs, channels_last in (
        ("cuda", True, True), ("cuda", False, True), ("cuda", True, False), ("cpu", True, True), ("mps", True, True)
    ):
        assert compile_network(net, torch.device(device), cuda_graphs, channels_last) is net
    cuda = [{"triton.cudagraphs": graphs, "force_layout_optimization": layout}
            for graphs, layout in ((True, True), (False, True), (True, False))]
    assert calls == [*({"options": o} for o in cuda), {}, {}]  # CUDA graphs and the layout on CUDA only
