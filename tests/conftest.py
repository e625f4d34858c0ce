"""Shared fixtures: tiny synthetic CIFAR-format data and the real-data location for slow tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import write_cifar_folder

CIFAR_ENV = "FEATVIS_CIFAR10_DIR"


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A data_dir holding a tiny synthetic CIFAR-10 folder."""
    write_cifar_folder(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def real_cifar_dir() -> Path:
    """The real CIFAR-10 data_dir named by FEATVIS_CIFAR10_DIR; slow tests fail (not skip) without it."""
    value = os.environ.get(CIFAR_ENV)
    if not value or not (Path(value) / "cifar-10-batches-py").is_dir():
        pytest.fail(f"set {CIFAR_ENV} to a folder that contains cifar-10-batches-py (got {value!r})")
    return Path(value)
