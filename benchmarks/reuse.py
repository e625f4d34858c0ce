"""Reuse benchmark: ``FeatureVisCallback`` on a Lightning classifier that knows nothing of featvis.

The model is torchvision's ResNet-18 (``weights=None``) with a small-image stem: a 3x3 stride-1 ``conv1`` that
keeps the max pool, so layer1 works on 16x16 maps (about 4x cheaper on a CPU than dropping the pool as well). It
trains on CIFAR-10 read from the python batches, through ordinary ``torchvision.transforms.v2`` (random crop with
4 px padding, horizontal flip, ``ToDtype``, ``Normalize`` with the usual CIFAR-10 mean and std) in a plain
``DataLoader``, with SGD and a one-cycle learning rate. Nothing in it comes from featvis: the callback is told
only what any user could tell it.

The callback then renders every class of the trained model twice, with the same seed and render settings:

(a) ``normalization_mean``/``normalization_std`` only, optimising per RGB channel (``learn_basis=False``, the
    callback's behaviour before it learned colour bases);
(b) the colour basis the callback learns from the run's training data (the default).

A grayscale twin of the model (1-channel stem, CIFAR-10 through ``Grayscale``) is rendered through
``input_convention=InputConvention(..., order="L")`` with its learned 1-D basis. Each render (4 images per class)
is scored beside as many real test images with ``benchmarks/quality.py``'s reference models and metrics
(transfer accuracy, the references' probability of the target class, plausibility, spectral gap) and with the
colour distance :func:`featvis.quality.colour_distance`: the Fréchet distance between the pixel-colour
distributions (mean and 3x3 covariance of the RGB values of all pixels) of the images and of the other real test
images. The spectral gap compares spectra of the grey level, so it cannot tell natural colours from psychedelic
ones; the colour distance sees a shifted hue or mean colour and too much or too little saturation. The real row
(real test images against the others) is the level a render can hope for. Grey renders are repeated to 3 channels
for the RGB references and metrics, and their colour distance is measured against grey versions of the real
images, the colours a grey model can have (the JSON also holds it against the colour images).

Run from the repository root. It is heavy on a CPU: in float32 on one free core of an AVX2-only EPYC a training
step (256 images) took about 5 s, some 16 minutes per epoch. The trained checkpoints are cached under ``--out``,
so a rerun with the same settings only renders and scores::

    python -m benchmarks.reuse --data-dir ../shared/cifar10 --refs runs/ref/*.pt --out runs/reuse

It prints a markdown table and writes it to ``<out>/table.md``, writes the picture sheet ``<out>/reuse_sheet.png``
(rows: classes; columns: (a), (b), the grey model) and, with ``--json OUT``, the numbers. Without ``--refs`` the
reference columns are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from benchmarks.common import (
    FitTimer,
    Reference,
    load_references,
    machine_label,
    make_parser,
    quality_scores,
    real_test_set,
    run_script,
    write_json,
)
from benchmarks.reference_models import cifar_folder
from featvis import FeatureVisCallback, RenderConfig
from featvis.cifar import read_class_names, read_split
from featvis.colour import InputConvention, grey_to_rgb, to_grey
from featvis.images import labelled_grid, save_png
from featvis.quality import colour_distance, reference_spectrum, spectral_gap

#: The usual CIFAR-10 normalisation of torchvision recipes, in [0, 1] RGB units.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
#: Mean and std of CIFAR-10's training images after ``v2.Grayscale`` (ITU-R 601 luma), measured once.
GREY_MEAN = (0.4787,)
GREY_STD = (0.2388,)
ROWS = {
    "real": "real test images",
    "a": "(a) normalisation only",
    "b": "(b) learned basis",
    "c": "(c) learned basis, phase-only spectra",
    "grey": "grayscale model",
}
#: The callback's renders of the RGB model: (learn_basis, parameterisation) per row.
RGB_RENDERS = {"a": (False, "fourier"), "b": (True, "fourier"), "c": (True, "phase")}


# ---------------------------------------------------------------------------------------------- the user's model


def small_resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem for 32-px images; the max pool stays (16x16 in layer1)."""
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    return net


class ResNetCifar(L.LightningModule):
    """An ordinary LightningModule: ResNet-18 on normalised images, SGD with a one-cycle learning rate.

    Args:
        in_channels: 3 for RGB, 1 for grayscale input.
        class_names: the class names (the callback labels its images with them).
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: SGD weight decay.
    """

    def __init__(
        self,
        in_channels: int = 3,
        class_names: Sequence[str] = (),
        lr: float = 0.2,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names, self.lr, self.weight_decay = list(class_names), lr, weight_decay
        # Channels-last runs the CPU convolutions about 1.3x faster here.
        self.net = small_resnet18(in_channels, len(self.class_names) or 10).to(
            memory_format=torch.channels_last
        )
        self.example_input_array = torch.zeros(1, in_channels, 32, 32)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=self.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=self.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=0.25,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class UInt8Images(Dataset):
    """``(image, label)`` pairs of uint8 ``(N, C, 32, 32)`` images passed through a torchvision transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def cifar_transform(grey: bool, train: bool) -> v2.Transform:
    """The torchvision pipeline of a plain CIFAR-10 recipe: augmentation (train), dtype, normalisation."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if grey:
        steps.append(v2.Grayscale(num_output_channels=1))
    if train:
        steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    mean, std = (GREY_MEAN, GREY_STD) if grey else (CIFAR_MEAN, CIFAR_STD)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def test_accuracy(
    model: nn.Module, images: Tensor, labels: Tensor, grey: bool, batch_size: int = 500
) -> float:
    """Top-1 accuracy of ``model`` on uint8 test images (no augmentation)."""
    transform, correct = cifar_transform(grey, train=False), 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            logits = model(transform(images[start : start + batch_size]))
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(labels))


def train_or_load(
    kind: str, data_dir: str | Path, out: Path, epochs: int, args: argparse.Namespace
) -> tuple[ResNetCifar, L.Trainer, dict]:
    """Train the ``"rgb"`` or ``"grey"`` model, or restore it from the checkpoint a previous run cached.

    Returns the model, the trainer that fitted (or restored) it, whose ``train_dataloader`` the callback reads
    its colour basis from, and the model's record (test accuracy, training seconds, settings).
    """
    folder, grey = cifar_folder(data_dir), kind == "grey"
    images, labels = read_split(folder, train=True)
    if args.train_subset is not None:
        images, labels = images[: args.train_subset], labels[: args.train_subset]
    tag = f"{kind}_e{epochs}_n{len(labels)}_b{args.batch_size}_lr{args.lr:g}_s{args.seed}"
    ckpt, record_path = out / f"{tag}.ckpt", out / f"{tag}.json"
    loader = DataLoader(
        UInt8Images(images, labels, cifar_transform(grey, train=True)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(labels) > args.batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=args.progress,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer := FitTimer()],
    )
    # Seeded global state for the weight init and the augmentations, restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = ResNetCifar(1 if grey else 3, read_class_names(folder), lr=args.lr)
        start = time.perf_counter()
        cached = ckpt.is_file() and record_path.is_file()
        # A cached checkpoint is at max_epochs, so fit restores it and only sets up the training dataloader.
        trainer.fit(model, loader, ckpt_path=ckpt if cached else None)
        seconds = time.perf_counter() - start
    if cached:
        record = json.loads(record_path.read_text())
        print(f"{kind} model: restored {ckpt} (trained in {record['train_seconds']:.0f} s)")
        return model, trainer, record
    trainer.save_checkpoint(ckpt)
    test_images, test_labels = read_split(folder, train=False)
    record = {
        "test_accuracy": test_accuracy(model, test_images, test_labels, grey),
        "train_seconds": seconds,
        "epoch_seconds": timer.epoch_seconds,
        "epochs": epochs,
        "train_images": len(labels),
        "batch_size": args.batch_size,
        "lr": args.lr,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{kind} model: test accuracy {record['test_accuracy']:.4f} after {epochs} epochs, {seconds:.0f} s")
    return model, trainer, record


# ---------------------------------------------------------------------------------------------- render and score


def render_classes(
    model: ResNetCifar,
    trainer: L.Trainer,
    config: RenderConfig,
    *,
    learn_basis: bool,
    convention: InputConvention | None = None,
) -> tuple[Tensor, float]:
    """Every class of ``model`` rendered by the callback; ``(T, K, 3, H, W)`` RGB and the wall seconds.

    Without ``convention`` the callback is told the CIFAR-10 ``normalization_mean``/``normalization_std``. The
    seconds include fitting the colour basis.
    """
    settings: dict[str, Any] = {
        "config": config,
        "learn_basis": learn_basis,
        "save_png": False,
        "metrics": False,
    }
    if convention is None:
        settings |= {"normalization_mean": list(CIFAR_MEAN), "normalization_std": list(CIFAR_STD)}
    else:
        settings["input_convention"] = convention
    callback = FeatureVisCallback(**settings)
    start = time.perf_counter()
    # The basis fit reads the training set through its random augmentations (the global RNG): seed them, so a
    # rerun from the cached checkpoint fits the same basis; the global state is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        rgb = callback.render(model, trainer)["rgb"]
    return as_rgb(rgb), time.perf_counter() - start


def as_rgb(images: Tensor) -> Tensor:
    """Images with 1 channel (grey) repeated to 3, for RGB references and metrics; RGB images as they are."""
    return images.expand(*images.shape[:-3], 3, *images.shape[-2:]) if images.shape[-3] == 1 else images


def real_sample(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Indices of ``per_class`` test images of every class, class-major ``(classes, per_class)``."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    picked = [order[labels[order] == c][:per_class] for c in range(int(labels.max()) + 1)]
    short = [c for c, indices in enumerate(picked) if len(indices) < per_class]
    if short:
        raise ValueError(
            f"the test set has fewer than {per_class} images of class(es) {short}; give a CIFAR-10 folder whose "
            f"test batch has at least {per_class} images of every class."
        )
    return torch.stack(picked)


def score_rows(
    renders: dict[str, Tensor], data_dir: str | Path, references: Sequence[Reference], seed: int
) -> dict[str, dict[str, float]]:
    """Score each ``(classes, K, 3, H, W)`` render, and ``K`` real test images per class, with the same metrics.

    The real row's images leave the real set that every row is compared with (plausibility, spectrum, colours),
    so the real row measures how close two disjoint sets of real images are: the level a render can hope for.
    """
    real_images, real_labels, _ = real_test_set(data_dir)
    chosen = real_sample(real_labels, next(iter(renders.values())).shape[1], seed)
    keep = torch.ones(len(real_labels), dtype=torch.bool)
    keep[chosen.flatten()] = False
    rest = (real_images[keep], real_labels[keep])
    spectrum = reference_spectrum(rest[0], real_images.shape[-1])
    classes = list(range(chosen.shape[0]))
    grey_rest = grey_to_rgb(to_grey(rest[0]))
    rows: dict[str, dict[str, float]] = {}
    cache: dict[str, Tensor] = {}
    for key, rgb in {"real": real_images[chosen], **renders}.items():
        rgb = as_rgb(rgb)
        row = {"colour_distance": colour_distance(rgb.flatten(0, 1), rest[0])}
        if key == "real":  # against an equally small, disjoint real sample too: the spread of small samples
            other = real_sample(rest[1], chosen.shape[1], seed + 1).flatten()
            row["colour_distance_to_same_size_sample"] = colour_distance(rgb.flatten(0, 1), rest[0][other])
        if key == "grey":  # the colours a grey model can have: grey real images
            row["colour_distance_to_colour"] = row["colour_distance"]
            row["colour_distance"] = colour_distance(rgb.flatten(0, 1), grey_rest)
        if references:
            scores = quality_scores(rgb, classes, references, rest, spectrum, real_features=cache)
            row |= {
                "transfer": scores["transfer"]["mean"],
                "target_prob": scores["target_prob"],
                "plausibility": scores["plausibility"]["mean"],
                "spectral_gap": scores["spectral_gap"],
                "diversity_vs_real": scores["diversity_vs_real"],
            }
        else:
            row["spectral_gap"] = spectral_gap(rgb.flatten(0, 1), spectrum)
        rows[key] = row
    return rows


# ---------------------------------------------------------------------------------------------- output


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """The rows as a markdown table; the reference columns only when the rows have them."""
    columns = [("model test acc", "test_accuracy")]
    if any("transfer" in row for row in rows.values()):
        columns += [("transfer (refs)", "transfer"), ("target prob (refs)", "target_prob")]
    columns += [("spectral gap", "spectral_gap")]
    if any("plausibility" in row for row in rows.values()):
        columns += [("plausibility", "plausibility"), ("diversity vs real (refs)", "diversity_vs_real")]
    columns += [("colour distance", "colour_distance"), ("render s", "render_seconds")]

    def cell(value: float | None, key: str) -> str:
        if value is None or not math.isfinite(value):
            return "-"
        return f"{value:.0f}" if key == "render_seconds" else f"{value:.3f}"

    lines = [
        "| images | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key, row in rows.items():
        lines.append(
            f"| {ROWS[key]} | " + " | ".join(cell(row.get(name), name) for _, name in columns) + " |"
        )
    return "\n".join(lines)


def picture_sheet(renders: dict[str, Tensor], class_names: Sequence[str], scale: int = 3) -> Tensor:
    """Classes down, the renders' images across (a blank column between renders), labelled; ``(3, H, W)``."""
    groups: list[Tensor] = []
    labels: list[str] = []
    for key, rgb in renders.items():
        if groups:
            groups.append(torch.ones(rgb.shape[0], 1, 3, *rgb.shape[-2:]))
            labels.append("")
        groups.append(as_rgb(rgb))
        labels += [
            f"({key}) {i + 1}" if key in RGB_RENDERS else f"{key} {i + 1}" for i in range(rgb.shape[1])
        ]
    return labelled_grid(torch.cat(groups, dim=1), list(class_names), labels, scale=scale)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the numbers it printed (see the module docstring)."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    references = load_references(args.refs) if args.refs else []  # before the long work: a bad path fails now
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = RenderConfig(seed=args.seed, images_per_target=args.per_class, steps=args.steps)
    models: dict[str, dict] = {}
    renders: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    model, trainer, models["rgb"] = train_or_load("rgb", args.data_dir, out, args.epochs, args)
    for key, (learn, kind) in RGB_RENDERS.items():
        settings = config.replace(parameterisation=kind)
        renders[key], seconds[key] = render_classes(model, trainer, settings, learn_basis=learn)
        print(f"rendered ({key}) in {seconds[key]:.0f} s")
    if args.grey_epochs > 0:
        model, trainer, models["grey"] = train_or_load("grey", args.data_dir, out, args.grey_epochs, args)
        convention = InputConvention(mean=GREY_MEAN, std=GREY_STD, order="L")
        renders["grey"], seconds["grey"] = render_classes(
            model, trainer, config, learn_basis=True, convention=convention
        )
        print(f"rendered the grey model in {seconds['grey']:.0f} s")
    rows = score_rows(renders, args.data_dir, references, args.seed)
    for key in renders:
        rows[key]["render_seconds"] = seconds[key]
        rows[key]["test_accuracy"] = models["grey" if key == "grey" else "rgb"]["test_accuracy"]
    table = format_table(rows)
    print(table)
    (out / "table.md").write_text(table + "\n")
    class_names = read_class_names(cifar_folder(args.data_dir))
    save_png(picture_sheet(renders, class_names), out / "reuse_sheet.png")
    torch.save(renders, out / "renders.pt")  # (classes, K, 3, H, W) RGB per render, for a closer look
    print(f"wrote {out / 'table.md'} and {out / 'reuse_sheet.png'}")
    result = {
        "rows": rows,
        "models": models,
        "render": {"steps": config.steps, "images_per_target": config.images_per_target, "seed": config.seed},
        "references": [name for name, _, _ in references],
        "machine": machine_label(),
        "seconds": time.perf_counter() - started,
    }
    write_json(result, args.json)
    print(f"(reuse took {result['seconds']:.0f} s)")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("benchmarks.reuse", __doc__)
    parser.add_argument("--data-dir", default="data", help="folder containing cifar-10-batches-py")
    parser.add_argument(
        "--refs", nargs="*", default=[], help="reference model .pt files (none: no reference columns)"
    )
    parser.add_argument(
        "--out", default="runs/reuse", help="checkpoints, table.md and reuse_sheet.png go here"
    )
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the RGB model")
    parser.add_argument(
        "--grey-epochs", type=int, default=2, help="training epochs of the grey model (0: none)"
    )
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2, help="peak one-cycle learning rate")
    parser.add_argument("--steps", type=int, default=RenderConfig().steps, help="render optimisation steps")
    parser.add_argument(
        "--per-class",
        type=int,
        default=RenderConfig().images_per_target,
        help="images per class (renders, real row)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training, render and sampling seed")
    parser.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    parser.add_argument("--json", help="write the numbers here")
    return parser


if __name__ == "__main__":
    run_script(main)
