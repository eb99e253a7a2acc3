"""Shared test setup: import the project from the repository root, one torch thread per worker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)  # tests run in parallel, one per core (pytest -n 2)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def subprocess_env() -> dict[str, str]:
    """Environment for CLI runs in tests: single-threaded and unbuffered."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return env
