"""What several benchmarks share: the default config, reference models, real test images, scoring and output.

Nothing here runs on import; the benchmark modules (``python -m benchmarks.<name>``) import from here, never from
each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from benchmarks.reference_models import cifar_folder, load_reference
from featvis.checkpoints import load_module
from featvis.cifar import read_class_names, read_split
from featvis.cli.fit import main as featvis_main
from featvis.engine import RenderConfig, resolve_autocast
from featvis.hidden import SheetConfig
from featvis.images import labelled_grid, save_png
from featvis.quality import RGBInput, score_render

REPO = Path(__file__).resolve().parents[1]
#: The default run's LightningCLI config: model, data, trainer and the callback's settings.
CONFIG = REPO / "configs" / "cifar10.yaml"
#: Where ``python -m benchmarks.quality train`` writes the reference models.
DEFAULT_REF_DIR = Path("runs/ref")

#: ``(name, model, info)`` of a reference classifier: its file's stem, the model (RGB input), its saved record.
Reference = tuple[str, nn.Module, dict]


def make_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of benchmark ``module``: usage ``python -m <module>``, ``doc`` shown as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run_script(entry: Callable[[], object]) -> None:
    """Run a benchmark's ``main``; a user error (bad value, missing file) prints one line and exits with 2."""
    try:
        entry()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def write_json(result: Any, path: str | Path | None) -> None:
    """Write ``result`` as indented, key-sorted JSON to ``path`` (parent folders created); None writes nothing."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")


def load_config(path: str | Path = CONFIG) -> dict:
    """The LightningCLI config file ``path`` (``configs/cifar10.yaml`` by default) as a dict.

    Raises:
        FileNotFoundError: there is no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found.")
    return yaml.safe_load(path.read_text())


def callback_args(config: dict, path: str | Path = CONFIG) -> dict:
    """``FeatureVisCallback`` arguments of a loaded config, its render settings as a :class:`RenderConfig`.

    ``featvis fit`` configures its callback in the top-level ``featvis:`` section (a config written for a plain
    LightningCLI may list it under ``trainer.callbacks`` with ``init_args`` instead); its ``config`` block lists
    the render settings that differ from :class:`RenderConfig`'s defaults, and a missing block means all defaults;
    a ``sheets`` block becomes a :class:`SheetConfig`.

    Args:
        config: a config loaded by :func:`load_config`.
        path: its file, for the error message.

    Raises:
        ValueError: the config has no ``FeatureVisCallback`` entry, or a render setting is invalid.
    """
    args = dict(config["featvis"] or {}) if "featvis" in config else None
    for entry in (config.get("trainer") or {}).get("callbacks") or []:
        if str(entry.get("class_path", "")).endswith("FeatureVisCallback"):
            args = dict(entry.get("init_args") or {})
    if args is None:
        raise ValueError(
            f"{path} has no featvis section and no FeatureVisCallback entry under trainer.callbacks."
        )
    args["config"] = RenderConfig(**(args.get("config") or {}))
    if isinstance(args.get("sheets"), dict):  # a `sheets:` block: the channel sheets' settings
        args["sheets"] = SheetConfig(**args["sheets"])
    return args


def load_references(paths: Sequence[str | Path]) -> list[Reference]:
    """Load reference classifiers, each named by its file's stem, or by its path when stems repeat.

    Two runs' checkpoints are both ``last.ckpt``: named by stem alone, the second would replace the first in
    every per-reference table, and the scores would silently be one reader's.

    A ``.pt`` file is a reference model of ``python -m benchmarks.quality train``; a ``.ckpt`` file is a
    ``featvis fit`` checkpoint (another run's classifier, read through its own input space; its record's
    ``test_accuracy`` is NaN, since the checkpoint does not hold it).

    Raises:
        ValueError: no paths.
        FileNotFoundError: a ``.pt`` file is missing.
        featvis.checkpoints.CheckpointError: a ``.ckpt`` file is missing or is not a featvis checkpoint.
    """
    if not paths:
        raise ValueError(
            "no reference models given; train them with `python -m benchmarks.quality train` (they go to "
            f"{DEFAULT_REF_DIR}) and pass --refs {DEFAULT_REF_DIR}/*.pt."
        )
    stems = [Path(path).stem for path in paths]
    references = []
    for path, stem in zip(paths, stems, strict=True):
        if Path(path).suffix == ".ckpt":
            classifier = load_module(path)
            model: nn.Module = RGBInput(classifier, classifier.colour).eval()
            info: dict = {"arch": type(classifier.net).__name__, "test_accuracy": float("nan")}
        else:
            model, info = load_reference(path)
        name = str(Path(path).with_suffix("")) if stems.count(stem) > 1 else stem
        references.append((name, model, info))
    return references


def real_test_set(data_dir: str | Path) -> tuple[Tensor, Tensor, list[str]]:
    """The CIFAR-10 test split under ``data_dir``: RGB images in [0, 1] ``(N, 3, 32, 32)``, labels, class names."""
    folder = cifar_folder(data_dir)
    images, labels = read_split(folder, train=False)
    return images.float().div_(255), labels, read_class_names(folder)


def reference_target_prob(rgb: Tensor, classes: Sequence[int], references: Sequence[Reference]) -> float:
    """Mean softmax probability the references give the intended class (mean over references and images)."""
    images = rgb.flatten(0, 1).float()
    targets = torch.tensor(list(classes)).repeat_interleave(rgb.shape[1])
    probs = []
    for _, model, _ in references:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probs.append(model(images).softmax(1).gather(1, targets[:, None]).mean())
        model.train(was_training)
    return float(torch.stack(probs).mean())


def quality_scores(
    rgb: Tensor,
    classes: Sequence[int],
    references: Sequence[Reference],
    real: tuple[Tensor, Tensor],
    spectrum: Tensor,
    *,
    classifier: nn.Module | None = None,
    real_features: dict[str, Tensor] | None = None,
    k: int = 10,
) -> dict:
    """Score visualisations with :func:`featvis.quality.score_render` and arrange the numbers per reference.

    Args:
        rgb: ``(T, K, 3, H, W)`` images, RGB in [0, 1]: ``K`` images of each of ``T`` classes.
        classes: the class of each of the ``T`` rows.
        references: reference classifiers (:func:`load_references`).
        real: real test images (RGB in [0, 1]) and their labels, for the plausibility.
        spectrum: ``featvis.quality.reference_spectrum`` of real images, for the spectral gap.
        classifier: the featvis ``ClassifierModule`` the images were rendered from: adds ``robustness`` and
            ``diversity`` (NaN with one image per class), computed in its colour space.
        real_features: cache of the real images' features per reference name (see ``score_render``).
        k: nearest neighbours of the plausibility.

    Returns:
        ``{"images", "transfer": {name: acc, ..., "mean"}, "plausibility": {name: value, ..., "mean"},
        "spectral_gap", "colour_distance", "diversity_vs_real", "target_prob" (the references' mean probability of
        the intended class), "reference_test_accuracy": {name: acc}}`` (means, ``target_prob``
        and ``diversity_vs_real`` NaN without references or with one image per class), plus ``"robustness"`` and
        ``"diversity"`` with a classifier.
    """
    report = score_render(
        rgb,
        list(classes),
        model=None if classifier is None else RGBInput(classifier.net, classifier.colour),
        spectrum=spectrum,
        references={name: model for name, model, _ in references},
        real=real,
        real_features=real_features,
        k=k,
    )
    scores = report.scores
    names = [name for name, _, _ in references]
    result: dict = {
        "images": int(rgb.shape[0] * rgb.shape[1]),
        "transfer": {name: scores[f"transfer_accuracy/{name}"] for name in names},
        "plausibility": {name: scores[f"plausibility/{name}"] for name in names},
        "spectral_gap": scores["spectral_gap"],
        "colour_distance": scores["colour_distance"],
        "diversity_vs_real": scores.get("diversity_vs_real", float("nan")),
        "target_prob": reference_target_prob(rgb, classes, references) if references else float("nan"),
        "reference_test_accuracy": {name: float(info["test_accuracy"]) for name, _, info in references},
    }
    # Without references (an ablation of what needs none) transfer and plausibility are not measured.
    result["transfer"]["mean"] = scores.get("transfer_accuracy", float("nan"))
    result["plausibility"]["mean"] = scores.get("plausibility", float("nan"))
    if classifier is not None:
        result["robustness"] = scores["robustness"]
        result["diversity"] = scores.get("diversity", float("nan"))
    return result


def picture_sheet(
    path: str | Path,
    real_images: Tensor,
    real_labels: Tensor,
    groups: Sequence[tuple[str, Tensor]],
    class_names: Sequence[str],
) -> None:
    """Write a picture sheet, one class per line: its first four real test images (columns ``real 1``-``real 4``),
    then each group's pictures (columns ``<label>1``, ``<label>2``, ...), tiles at 3x.

    Args:
        path: the PNG to write.
        real_images: real test images, RGB in [0, 1].
        real_labels: their classes.
        groups: ``(column label prefix, (classes, K, 3, H, W) pictures)`` in sheet order.
        class_names: one name per line.
    """
    count = len(class_names)
    real = real_images[first_per_class(real_labels, 4)][:count]
    tiles = torch.cat([real, *(pictures[:count] for _, pictures in groups)], dim=1)
    columns = [f"real {i + 1}" for i in range(real.shape[1])]
    columns += [f"{label}{i + 1}" for label, pictures in groups for i in range(pictures.shape[1])]
    save_png(labelled_grid(tiles, class_names, columns, scale=3), path)


def first_per_class(labels: Tensor, count: int) -> Tensor:
    """Indices of the first ``count`` test images of each class (fewer if a class has fewer), ``(classes, n)``."""
    classes = range(int(labels.max()) + 1)
    count = min(count, *(int((labels == c).sum()) for c in classes))
    return torch.stack([(labels == c).nonzero().flatten()[:count] for c in classes])


def machine_label() -> dict[str, Any]:
    """The CPU model (``lscpu``'s ``Model name``, else ``platform``), core count, native bf16, torch threads, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in listing.splitlines() if "Model name" in line), cpu
        )
    except (OSError, subprocess.SubprocessError):  # no lscpu (macOS, minimal containers): platform's name
        pass
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "native_bf16": resolve_autocast("auto", torch.device("cpu"), torch.float32) is not None,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def sync(device: torch.device | None = None) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA), so a timer reads the work, not its launch.

    Args:
        device: the device to wait for; None waits for CUDA when this process has started it.
    """
    if device is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class FitTimer(Callback):
    """Times a fit from inside, epoch by epoch, and records the per-epoch validation accuracy.

    Per training epoch: ``epoch_seconds`` from ``on_train_epoch_start`` to ``on_train_epoch_end`` (validation, the
    FeatureVisCallback's render and the checkpoint happen inside it), ``train_seconds`` up to the start of that
    epoch's validation (or the epoch's end), ``val_seconds`` of the validation loop, ``steps`` and ``images``
    trained, and the logged ``val/acc_<n>view`` (``accuracy``, named by ``accuracy_name``). The sanity check is
    not counted. Add it to ``featvis fit`` with ``--trainer.callbacks+=benchmarks.common.FitTimer``.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.train_seconds: list[float] = []
        self.val_seconds: list[float] = []
        self.steps: list[int] = []
        self.images: list[int] = []
        self.accuracy: list[float] = []
        self.accuracy_name: str | None = None
        self._epoch_start = self._val_start = 0.0
        self._train_end: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync()
        self._epoch_start, self._train_end = time.perf_counter(), None
        self.steps.append(0)
        self.images.append(0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.steps[-1] += 1
        self.images[-1] += int(batch[1].shape[0])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        sync()
        self._val_start = time.perf_counter()
        if self._train_end is None and trainer.state.fn == "fit":
            self._train_end = self._val_start

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            sync()
            self.val_seconds.append(time.perf_counter() - self._val_start)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = sorted(key for key in trainer.callback_metrics if key.startswith("val/acc"))
        if trainer.sanity_checking or not names:
            return
        self.accuracy_name = names[0]
        self.accuracy.append(float(trainer.callback_metrics[names[0]]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync()
        end = time.perf_counter()
        self.epoch_seconds.append(end - self._epoch_start)
        self.train_seconds.append((self._train_end or end) - self._epoch_start)


def logged_scalars(log_dir: str | Path | None, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of scalar ``tag`` in the TensorBoard event files below ``log_dir``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    values: list[tuple[int, float]] = []
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")) if log_dir else []:
        events = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values += [(event.step, event.value) for event in events.Scalars(tag)]
    return sorted(values)


def run_featvis_fit(data_dir: str | Path, log_dir: str | Path, extra: Sequence[str] = ()) -> tuple[dict, Any]:
    """Run ``featvis fit --config configs/cifar10.yaml`` in this process and time it with :class:`FitTimer`.

    Args:
        data_dir: the ``data.data_dir`` holding ``cifar-10-batches-py`` (never downloaded).
        log_dir: the TensorBoard logger's ``save_dir`` (checkpoints and the callback's PNGs go below it).
        extra: more ``featvis fit`` arguments, e.g. ``["--trainer.max_epochs", "2"]``.

    Returns:
        The summary (``wall_seconds`` of the whole fit, the :class:`FitTimer` lists, ``render_seconds`` per epoch
        and ``render_before_training`` from the logged ``featvis/render_seconds``, ``final_tta_accuracy``: the
        ``test/acc`` logged at the end of fit, NaN if none, ``precision``, ``device``) and the finished CLI.

    Raises:
        FileNotFoundError: ``data_dir`` holds no ``cifar-10-batches-py``.
    """
    if not (Path(data_dir) / "cifar-10-batches-py").is_dir():
        raise FileNotFoundError(f"{data_dir} holds no cifar-10-batches-py folder; pass --data <data_dir>.")
    # The benchmark's own settings go after ``extra``: a --config there that sets trainer.logger or
    # trainer.callbacks (the speed-run overlay sets the logger) would otherwise replace the log dir or drop the timer.
    args = ["fit", "--config", str(CONFIG), *extra]
    args += ["--data.data_dir", str(data_dir), "--data.download", "false"]
    args += [
        "--trainer.logger.init_args.save_dir",
        str(log_dir),
        "--trainer.callbacks+=benchmarks.common.FitTimer",
    ]
    start = time.perf_counter()
    with mock.patch.object(
        sys, "argv", sys.argv[:1]
    ):  # LightningCLI warns when it also sees our own arguments
        cli = featvis_main(args)
    wall = time.perf_counter() - start
    assert cli is not None  # main returns the CLI after a run
    trainer = cli.trainer
    timer = next(c for c in trainer.callbacks if isinstance(c, FitTimer))  # type: ignore[attr-defined]
    renders = logged_scalars(trainer.log_dir, "featvis/render_seconds")
    final = trainer.callback_metrics.get("test/acc")
    summary = {
        "wall_seconds": wall,
        "epochs": len(timer.epoch_seconds),
        "epoch_seconds": timer.epoch_seconds,
        "train_seconds": timer.train_seconds,
        "val_seconds": timer.val_seconds,
        "steps": timer.steps,
        "images": timer.images,
        "accuracy_name": timer.accuracy_name,
        "accuracy": timer.accuracy,
        "render_before_training": next((value for step, value in renders if step == 0), float("nan")),
        "render_seconds": [value for step, value in renders if step > 0],
        "final_tta_accuracy": float("nan") if final is None else float(final),
        "precision": str(trainer.precision),
        "device": str(cli.model.device),
    }
    return summary, cli
