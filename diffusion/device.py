"""The device and the autocast precision to run on, from the names users write, how a network is
compiled for its device, and how the process's host allocator is set up for CPU work.

One function each serves ``train.device`` / ``train.precision`` (the trainer), ``--device`` /
``--precision`` (``inference.py``, the benchmarks) and the notebooks; ``what`` names the setting
in the one-line :class:`UserError` a bad or unusable value raises.
"""

from __future__ import annotations

import ctypes
import platform

import torch

from diffusion.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, what: str = "device", local_rank: int = 0) -> torch.device:
    """``name`` as a device this machine has: ``auto`` picks cuda, then mps, then cpu; a bare
    ``cuda`` (also from ``auto``) is ``cuda:<local_rank>``, this process's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{what}: expected auto, cpu, cuda, cuda:N or mps, got '{name}'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{what}: '{name}' requested but CUDA is not available on this machine; use cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UserError(f"{what}: '{device}' requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{what}: 'mps' requested but MPS is not available on this machine; use cpu")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86: AVX-512 BF16 or AMX; Arm: the BF16
    extension). Elsewhere oneDNN falls back to kernels about ten times slower than fp32
    (docs/results.md#bf16-on-cpus)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_sampling_layout(dtype: torch.dtype | None) -> torch.memory_format:
    """The weight layout a CPU samples fastest in under autocast ``dtype`` (None: fp32):
    channels-last in fp32 and, on AMX, in bf16; contiguous in reduced precision without AMX,
    where oneDNN's channels-last bf16 kernels were slower (docs/results.md#channels-last-sampling-on-cpu)."""
    if dtype is None or torch.cpu._is_amx_tile_supported():
        return torch.channels_last
    return torch.contiguous_format


def autocast_dtype(
    precision: str, device: torch.device, what: str = "precision", sampling: bool = False
) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: no autocast, fp32).

    ``auto`` is bf16 on CUDA; on a CPU it is bf16 only for ``sampling`` on a CPU with native bf16
    (:func:`cpu_has_bf16`), where it samples faster and moves FID by at most 0.3, and fp32 for
    training, where bf16 cost sample quality (docs/results.md#bf16-on-cpus); fp32 elsewhere.
    """
    if precision not in PRECISIONS:
        raise UserError(f"{what}: expected one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        native_cpu = device.type == "cpu" and sampling and cpu_has_bf16()
        precision = "bf16" if device.type == "cuda" or native_cpu else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{what}: this GPU has no bf16 support; use fp16 or fp32")
    return _AUTOCAST_DTYPES[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of an autocast dtype, as :func:`autocast_dtype` takes it."""
    return next(name for name, value in _AUTOCAST_DTYPES.items() if value == dtype)


def compile_network(
    model: torch.nn.Module, device: torch.device, cuda_graphs: bool = True, channels_last_graph: bool = True
) -> torch.nn.Module:
    """``torch.compile(model)``; on CUDA the compiled calls are replayed as CUDA graphs with
    ``cuda_graphs`` (torch.compile's ``reduce-overhead`` mode), and with ``channels_last_graph``
    the graph keeps its activations channels-last.

    Inductor keeps a training graph NCHW when some convolution has at least twice as many input as
    output channels, as this U-Net's decoder has; cuDNN's bf16 convolutions run channels-last all
    the same, so every convolution would convert its tensors there and back. Forcing the layout
    removes those conversions (docs/results.md#channels-last-compiled-graphs-on-cuda). The model's own
    parameters and inputs stay NCHW, so checkpoints do not change.
    """
    if device.type != "cuda":
        return torch.compile(model)
    return torch.compile(
        model, options={"triton.cudagraphs": cuda_graphs, "force_layout_optimization": channels_last_graph}
    )


# glibc mallopt parameters (malloc.h) and the values set by tune_host_allocator.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
_TRIM_THRESHOLD = 1 << 30  # return freed heap memory to the OS only beyond 1 GiB


def tune_host_allocator(device: torch.device) -> bool:
    """For work on the CPU ``device``, keep freed host memory in the process instead of handing
    it back to the OS (glibc only; returns whether it applied).

    glibc returns a large freed block (or the free top of its heap) to the OS at once, so the next
    tensor of that size faults in every page anew. With blocks up to 32 MiB served and kept by the
    heap, repeated training steps and sampling calls fault none and run faster
    (docs/results.md#host-allocator-on-cpu). The trainer and ``inference.py`` call this; it changes no result.
    """
    if device.type != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
