"""Training throughput: featvis's data pipeline against the common torchvision baseline, same network.

Both sides train the default ``SpeedNet`` with SGD for the same number of steps after a warm-up, in one run:

* **featvis**: the training split held once as a uint8 tensor, whole batches sliced by
  ``CIFARDataModule.train_dataloader()``, moved to the device as uint8 and augmented there, batched, by
  ``CIFARDataModule.on_after_batch_transfer`` (random crop with reflect padding, horizontal flip, colour
  whitening), channels-last activations and bf16 autocast.
* **baseline**: the usual recipe, a torchvision-style dataset of PIL images with per-sample
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` in
  ``--workers`` DataLoader worker processes, fp32, contiguous (NCHW) memory format.

It prints a markdown table and the ratio of the two rates. Heavy: on a shared CPU, run it from the repository root
under the CPU lock::

    flock /tmp/featvis-cpu.lock python -m benchmarks.train_throughput --data-dir ../shared/cifar10

Without ``--data-dir`` it writes random images in the official CIFAR-10 format to a temporary folder.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks.common import load_config, make_parser, run_script, sync
from featvis.cifar import CIFAR10_FOLDER, TEST_BATCH, TRAIN_BATCHES, read_split
from featvis.data import CIFARDataModule
from featvis.networks import SpeedNet

LABEL_SMOOTHING = 0.2


def write_synthetic_cifar(root: Path, train_images: int, seed: int = 0) -> Path:
    """Write random uint8 images as an official-format ``cifar-10-batches-py`` folder under ``root``.

    Args:
        root: the data_dir to create.
        train_images: number of training images, spread over the five training batches.
        seed: seed of the random images and labels.
    """
    rng = np.random.default_rng(seed)
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = -(-train_images // len(TRAIN_BATCHES))
    for name, count in [(n, per_batch) for n in TRAIN_BATCHES] + [(TEST_BATCH, 100)]:
        batch = {
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=count).tolist(),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return folder


class PILImageDataset(Dataset):
    """What ``torchvision.datasets.CIFAR10`` does: HWC uint8 arrays, a PIL image and a transform per sample.

    Args:
        images: ``(N, 3, 32, 32)`` uint8 images.
        labels: ``(N,)`` labels.
        transform: per-sample transform of a PIL image.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Image.Image], Tensor]) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def _cycle(make_loader: Callable[[], DataLoader]) -> Iterator:
    while True:
        yield from make_loader()


def _train_steps(
    next_batch: Callable[[], tuple[Tensor, Tensor]],
    net: nn.Module,
    device: torch.device,
    bf16: bool,
    warmup: int,
    steps: int,
) -> tuple[float, float]:
    """Run ``warmup`` then ``steps`` SGD steps; return (seconds of the timed steps, last loss)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    net.train()
    loss = torch.zeros(())
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        images, labels = next_batch()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start, float(loss.detach())


def run_featvis(data_dir: Path, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """featvis: uint8 tensors in memory, batched on-device augmentation, bf16 autocast, channels-last."""
    datamodule = CIFARDataModule(data_dir=str(data_dir), batch_size=args.batch_size, download=False)
    datamodule.setup("fit")
    # on_after_batch_transfer augments when the trainer is training; stand in for the Trainer.
    datamodule.trainer = SimpleNamespace(training=True, current_epoch=0)
    batches = _cycle(datamodule.train_dataloader)

    def next_batch() -> tuple[Tensor, Tensor]:
        batch = tuple(part.to(device, non_blocking=True) for part in next(batches))
        return datamodule.on_after_batch_transfer(batch, 0)

    net = SpeedNet().to(device, memory_format=torch.channels_last)
    seconds, loss = _train_steps(next_batch, net, device, True, args.warmup, args.batches)
    data_seconds = _time_data_only(next_batch, device, args.warmup, args.batches)
    return {"seconds": seconds, "loss": loss, "data_seconds": data_seconds}


def run_baseline(data_dir: Path, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Baseline: torchvision per-sample transforms on PIL images in DataLoader workers, fp32, NCHW."""
    images, labels = read_split(data_dir / CIFAR10_FOLDER, train=True)
    as_float = images.float().div_(255)
    mean = as_float.mean(dim=(0, 2, 3)).tolist()
    std = as_float.std(dim=(0, 2, 3)).tolist()
    del as_float
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = PILImageDataset(images, labels, transform)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    batches = _cycle(lambda: loader)

    def next_batch() -> tuple[Tensor, Tensor]:
        images, labels = next(batches)
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    net = SpeedNet().to(device)
    seconds, loss = _train_steps(next_batch, net, device, False, args.warmup, args.batches)
    data_seconds = _time_data_only(next_batch, device, args.warmup, args.batches)
    return {"seconds": seconds, "loss": loss, "data_seconds": data_seconds}


def _time_data_only(
    next_batch: Callable[[], tuple[Tensor, Tensor]], device: torch.device, warmup: int, steps: int
) -> float:
    for _ in range(warmup):
        next_batch()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next_batch()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print a markdown table.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        Images per second of ``featvis`` and ``baseline`` and their ``ratio``.
    """
    parser = make_parser("benchmarks.train_throughput", __doc__)
    parser.add_argument(
        "--data-dir", default=None, help="data_dir holding cifar-10-batches-py (default: synthetic)"
    )
    parser.add_argument(
        "--batches", type=int, default=20, help="timed training steps per pipeline (default 20)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    config_batch_size = load_config()["data"]["batch_size"]
    parser.add_argument(
        "--batch-size",
        type=int,
        default=config_batch_size,
        help=f"images per step (default {config_batch_size}, data.batch_size of configs/cifar10.yaml)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the baseline (default 2)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.warmup < 0 or args.batch_size < 1 or args.workers < 0:
        parser.error("--batches and --batch-size must be >= 1, --warmup and --workers >= 0.")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    with tempfile.TemporaryDirectory(prefix="featvis-bench-") as scratch:
        if args.data_dir:
            data_dir, source = Path(args.data_dir), f"CIFAR-10 at {args.data_dir}"
        else:
            data_dir = Path(scratch)
            write_synthetic_cifar(data_dir, (args.warmup + args.batches) * args.batch_size * 2, args.seed)
            source = "synthetic random images"
        torch.manual_seed(args.seed)
        ours = run_featvis(data_dir, args, device)
        torch.manual_seed(args.seed)
        base = run_baseline(data_dir, args, device)

    images = args.batches * args.batch_size
    rate = {"featvis": images / ours["seconds"], "baseline": images / base["seconds"]}
    ratio = rate["featvis"] / rate["baseline"]
    print(
        f"\nTraining throughput, SpeedNet, {args.batches} timed steps of {args.batch_size} images after "
        f"{args.warmup} warm-up steps, {source}, device {device}, {torch.get_num_threads()} torch threads\n"
    )
    print("| pipeline | data path | precision | memory format | images/s | ms/step | data-only images/s |")
    print("|---|---|---|---|---:|---:|---:|")
    print(
        f"| featvis | uint8 tensor, batched on-device crop/flip/whitening | bf16 autocast | channels_last "
        f"| {rate['featvis']:.0f} | {1000 * ours['seconds'] / args.batches:.1f} "
        f"| {images / ours['data_seconds']:.0f} |"
    )
    print(
        f"| baseline | PIL + per-sample torchvision transforms, {args.workers} workers | fp32 | contiguous "
        f"| {rate['baseline']:.0f} | {1000 * base['seconds'] / args.batches:.1f} "
        f"| {images / base['data_seconds']:.0f} |"
    )
    print(f"\nratio featvis / baseline: {ratio:.2f}x (goal >= 3x)")
    return {"featvis": rate["featvis"], "baseline": rate["baseline"], "ratio": ratio}


if __name__ == "__main__":
    run_script(main)
