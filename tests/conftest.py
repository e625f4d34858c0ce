"""Shared fixtures: tiny synthetic CIFAR-format data and the real-data location for slow tests."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

CIFAR_ENV = "FEATVIS_CIFAR10_DIR"


def write_cifar_folder(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 python-batch folder (5 train batches, 1 test batch, meta) under ``root``.

    Images are class-dependent colour blobs plus noise, so a small network can learn them.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    palette = rng.integers(0, 256, size=(10, 3))

    def batch(label: str, count: int) -> dict:
        labels = rng.integers(0, 10, size=count)
        images = np.empty((count, 3, 32, 32), dtype=np.uint8)
        for i, y in enumerate(labels):
            base = palette[y][:, None, None].astype(np.float64)
            noise = rng.normal(0, 30, size=(3, 32, 32))
            images[i] = np.clip(base + noise, 0, 255).astype(np.uint8)
        return {
            "batch_label": label,
            "labels": labels.tolist(),
            "data": images.reshape(count, 3072),
            "filenames": [f"img_{label}_{i}.png" for i in range(count)],
        }

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(f"training batch {i} of 5", per_batch), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch("testing batch 1 of 1", per_batch), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return folder


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
