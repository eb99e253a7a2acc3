"""Shared test setup: one torch thread per worker; small stand-ins for the FID network.

The project is installed (``make`` runs ``pip install -e .``), so tests import it like users do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # tests run in parallel, one per core (pytest -n 2)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def exact_fp32():
    """No TF32 on CUDA: GPU results in fp32 are compared with the CPU or with each other."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def subprocess_env() -> dict[str, str]:
    """Environment for CLI runs in tests: single-threaded and unbuffered."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


class RandomConvFeatures(nn.Module):
    """A fixed random conv net in place of Inception: uint8 (N, 3, H, W) -> (N, 16); counts the images it has seen."""

    name = "random-conv16"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.5)
            self.conv.bias.copy_(torch.randn(16, generator=generator) * 0.1)
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(x)
        return torch.tanh(self.conv(x.float() / 127.5 - 1)).mean((2, 3))


def write_random_inception_weights(path: Path) -> Path:
    """A weights file for torch-fidelity's Inception with random values (seed 0), so the real
    network runs without its 91 MB download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class NotLoaded(FeatureExtractorInceptionV3):  # builds the architecture without loading weights
        def load_state_dict(self, *args, **kwargs):
            return None

    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_name("empty.pt")
    torch.save({}, empty)
    torch.manual_seed(0)
    torch.save(NotLoaded("random", ["2048"], feature_extractor_weights_path=str(empty)).state_dict(), path)
    empty.unlink()
    return path


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Replace every parameter (the zero-initialised ones too) with small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model
