"""Shared test helpers: a tiny Lightning classifier, a trainer factory, event-file reading, tiny CIFAR folders."""

from __future__ import annotations

import pickle
import random
from collections import OrderedDict
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from featvis.colour import ColourTransform
from featvis.engine import RenderConfig

CLASSES = ["red", "green", "blue"]
SIZE = 8
# Few steps and images keep every render a fraction of a second.
FAST = RenderConfig(steps=3, images_per_target=2, image_size=SIZE)


class TinyClassifier(L.LightningModule):
    """A tiny conv classifier with BatchNorm and dropout (so global RNG use would change training)."""

    def __init__(self, num_classes: int = 3, dropout: float = 0.2, shuffle: bool = True, samples: int = 48):
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, 6, 3, padding=1),
                bn=nn.BatchNorm2d(6),
                act=nn.ReLU(),
                drop=nn.Dropout(dropout),
                pool=nn.AdaptiveAvgPool2d(1),
                flat=nn.Flatten(),
                head=nn.Linear(6, num_classes),
            )
        )
        self.class_names = (
            CLASSES[:num_classes] if num_classes <= 3 else [f"c{i}" for i in range(num_classes)]
        )
        self.colour = ColourTransform.from_normalisation([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
        self.shuffle = shuffle
        self.samples = samples
        self.num_classes = num_classes

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def _data(self, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, self.num_classes, (self.samples,), generator=g)
        images = torch.randn(self.samples, 3, SIZE, SIZE, generator=g) * 0.5
        images[torch.arange(self.samples), labels % 3] += 2.0  # class = dominant channel
        return TensorDataset(images, labels)

    def train_dataloader(self):
        return DataLoader(self._data(0), batch_size=16, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(self._data(1), batch_size=16)


#: The normalisation PlainRGB's data loader applies (an ordinary mean/std one, in [0, 1] RGB units).
RGB_MEAN, RGB_STD = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]


class _Jittered(TensorDataset):
    """Images plus a jitter from Python's and NumPy's global generators, as augmentations draw them."""

    def __getitem__(self, index):
        image, label = super().__getitem__(index)
        return image + 1e-3 * (random.random() + float(np.random.rand())), label


class PlainRGB(TinyClassifier):
    """A module with no colour transform, trained on ``(rgb - RGB_MEAN) / RGB_STD`` colour-correlated images."""

    def __init__(self, jitter: bool = False, **kwargs):
        super().__init__(**kwargs)
        del self.colour
        self.jitter = jitter

    def _data(self, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, self.num_classes, (self.samples,), generator=g)
        grey = 0.5 + 0.15 * torch.randn(
            self.samples, 1, SIZE, SIZE, generator=g
        )  # the channels move together
        rgb = grey.expand(-1, 3, -1, -1) + 0.03 * torch.randn(self.samples, 3, SIZE, SIZE, generator=g)
        rgb[torch.arange(self.samples), labels % 3] += 0.2  # class = a tint
        images = ColourTransform.from_normalisation(RGB_MEAN, RGB_STD).to_model(rgb.clamp(0, 1))
        return (_Jittered if self.jitter else TensorDataset)(images, labels)


def make_trainer(root: Path, callbacks=(), epochs: int = 2, logger="tb", version=0, **kwargs) -> L.Trainer:
    if logger == "tb":
        logger = TensorBoardLogger(str(root), name="run", version=version)
    defaults = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": logger,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    defaults.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **defaults)


def read_events(log_dir: Path) -> dict:
    """Images and scalars of every event file below ``log_dir``: {tag: [(step, width, height)]}, {tag: [steps]}."""
    images: dict[str, list] = {}
    scalars: dict[str, list] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={IMAGES: 0, SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend((e.step, e.width, e.height) for e in acc.Images(tag))
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return {"images": images, "scalars": scalars}


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every event of scalar ``tag`` below ``log_dir``, in step order."""
    values = []
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.extend((e.step, e.value) for e in acc.Scalars(tag))
    return sorted(values)


def png_epochs(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "featvis").glob("epoch_*"))


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


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """Low-frequency images: random 4x4 colour fields upsampled bilinearly to 32x32."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    return nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False).clamp(0, 1)


def noise_images(count: int, seed: int) -> torch.Tensor:
    """Uniform noise in [0, 1], 32x32."""
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def correlated_colour(count: int, shared: float) -> ColourTransform:
    """A colour transform fitted to 8x8 pixels whose channels share ``shared`` of a common grey level.

    Correlated channels give the whitening a real rotation, so tests of the decorrelated basis are not trivial.
    """
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(count, 1, 8, 8, generator=generator)
    pixels = (shared * base + (1 - shared) * torch.rand(count, 3, 8, 8, generator=generator)) * 255
    return ColourTransform.from_pixels(pixels.to(torch.uint8))


# Allocates and frees a 64 MiB tensor (above glibc's largest mmap threshold) and prints the median of the minor page
# faults of five later allocations: as it comes, every one is a fresh mapping (16,384 pages of 4 KiB to fault in).
# The median, not the mean: with freed memory kept, about one run in three still faults one whole allocation in
# after the warm-up (a late allocation of torch's own splits the freed block once), and then none.
FAULTS_SCRIPT = """
import resource, statistics, sys, torch
from featvis.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    x = torch.ones(16 * 2**20); del x
each = []
for _ in range(5):
    before = faults()
    x = torch.ones(16 * 2**20); del x
    each.append(faults() - before)
print(statistics.median(each))
"""
