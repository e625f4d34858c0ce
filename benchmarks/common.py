"""What several benchmarks share: the default config, reference models, real test images, scoring and output.

Nothing here runs on import; the benchmark modules (``python -m benchmarks.<name>``) import from here, never from
each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor, nn

from benchmarks.reference_models import cifar_folder, load_reference
from featvis.cifar import read_class_names, read_split
from featvis.engine import RenderConfig
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
    the render settings that differ from :class:`RenderConfig`'s defaults, and a missing block means all defaults.

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
    return args


def load_references(paths: Sequence[str | Path]) -> list[Reference]:
    """Load reference classifiers (``python -m benchmarks.quality train``), each named by its file's stem.

    Raises:
        ValueError: no paths.
        FileNotFoundError: a file is missing.
    """
    if not paths:
        raise ValueError(
            "no reference models given; train them with `python -m benchmarks.quality train` (they go to "
            f"{DEFAULT_REF_DIR}) and pass --refs {DEFAULT_REF_DIR}/*.pt."
        )
    references = []
    for path in paths:
        model, info = load_reference(path)
        references.append((Path(path).stem, model, info))
    return references


def real_test_set(data_dir: str | Path) -> tuple[Tensor, Tensor, list[str]]:
    """The CIFAR-10 test split under ``data_dir``: RGB images in [0, 1] ``(N, 3, 32, 32)``, labels, class names."""
    folder = cifar_folder(data_dir)
    images, labels = read_split(folder, train=False)
    return images.float().div_(255), labels, read_class_names(folder)


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
        "spectral_gap", "reference_test_accuracy": {name: acc}}``, plus ``"robustness"`` and ``"diversity"``
        with a classifier.
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
        "reference_test_accuracy": {name: float(info["test_accuracy"]) for name, _, info in references},
    }
    result["transfer"]["mean"] = scores["transfer_accuracy"]
    result["plausibility"]["mean"] = scores["plausibility"]
    if classifier is not None:
        result["robustness"] = scores["robustness"]
        result["diversity"] = scores.get("diversity", float("nan"))
    return result
