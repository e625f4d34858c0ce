"""Ablation of the render engine: what each ingredient of the method adds, measured in one run on one model.

Renders every class of a featvis checkpoint with five cumulative settings and scores each set with the same
reference classifiers (``benchmarks/quality.py train``) and the same real test images::

    1. pixel only          pixel parameterisation, RGB colours, no transforms, no diversity
    2. + augmentations     the default random transforms inside the forward pass
    3. + Fourier           1/f-scaled Fourier parameterisation
    4. + decorrelated      colours optimised in the data's decorrelated basis (= featvis's defaults)
    5. + diversity         Gram-matrix diversity term on a hidden layer

Every row uses the same seed, steps and learning rate; only the named ingredient changes. Images are rounded to
8 bits first, exactly as ``featvis render`` writes them. Heavy: on a shared CPU, run it under the CPU lock::

    flock /tmp/featvis-cpu.lock python benchmarks/ablation.py --ckpt last.ckpt --refs runs/ref/*.pt \\
        --data-dir ../shared/cifar10

It prints a Markdown table (transfer accuracy, spectral gap, plausibility, render seconds); ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality import _load_refs, _real_test_set, _write_json, run_script, score_images  # noqa: E402
from featvis.engine import RenderConfig, render  # noqa: E402
from featvis.model import load_classifier  # noqa: E402

# (row label, settings that differ from the engine's defaults); each row adds one ingredient to the previous.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("pixel only", {"parameterisation": "pixel", "decorrelate": False, "transforms": []}),
    ("+ augmentations", {"parameterisation": "pixel", "decorrelate": False}),
    ("+ Fourier", {"parameterisation": "fourier", "decorrelate": False}),
    ("+ decorrelated colour (defaults)", {"parameterisation": "fourier", "decorrelate": True}),
]


def variants(diversity_layer: str, diversity_weight: float) -> list[tuple[str, dict[str, Any]]]:
    """The cumulative settings of the ablation, ending with the diversity term on ``diversity_layer``."""
    last = dict(VARIANTS[-1][1], diversity_layer=diversity_layer, diversity_weight=diversity_weight)
    return [*VARIANTS, ("+ diversity", last)]


def quantise(rgb: Tensor) -> Tensor:
    """Round RGB in [0, 1] to 8-bit levels, as a PNG file stores it."""
    return (rgb.float().clamp(0, 1) * 255).round() / 255


def run_ablation(
    model: torch.nn.Module,
    refs: list,
    real_images: Tensor,
    real_labels: Tensor,
    diversity_layer: str,
    diversity_weight: float = RenderConfig.diversity_weight,
    steps: int = RenderConfig.steps,
    seed: int = 0,
    k: int = 10,
    log=print,
) -> list[dict[str, Any]]:
    """Render and score every variant.

    Args:
        model: the featvis classifier to visualise (with ``colour`` and ``class_names``).
        refs: ``(name, model, info)`` reference classifiers.
        real_images: real test images, RGB in [0, 1].
        real_labels: their classes.
        diversity_layer: layer of the diversity term in the last row.
        diversity_weight: its weight.
        steps: optimisation steps of every render.
        seed: seed of every render.
        k: nearest real neighbours of the plausibility.
        log: receives one line per finished row; None is silent.

    Returns:
        One dict per row: ``name``, ``settings``, ``seconds``, ``transfer``, ``spectral_gap``,
        ``plausibility``, ``robustness`` (under the visualised model), ``mean_value`` (final objective).
    """
    render(model, steps=2)  # warm-up, so the first row's time is not the allocator's
    cache: dict[str, Tensor] = {}
    rows = []
    for name, settings in variants(diversity_layer, diversity_weight):
        result = render(model, steps=steps, seed=seed, **settings)
        images = quantise(result.rgb.flatten(0, 1))
        targets = torch.arange(result.rgb.shape[0]).repeat_interleave(result.rgb.shape[1])
        scores = score_images(
            images, targets, refs, real_images, real_labels, k, classifier=model, real_features=cache
        )
        row = {
            "name": name,
            "settings": {key: value for key, value in settings.items() if key != "transforms"},
            "transforms": "none" if settings.get("transforms") == [] else "default",
            "seconds": result.seconds,
            "transfer": scores["transfer"]["mean"],
            "transfer_per_model": {k: v for k, v in scores["transfer"].items() if k != "mean"},
            "spectral_gap": scores["spectral_gap"],
            "plausibility": scores["plausibility"]["mean"],
            "robustness": scores["robustness"],
            "mean_value": float(result.values.mean()),
        }
        rows.append(row)
        if log is not None:
            log(
                f"{name}: transfer {row['transfer']:.3f}, gap {row['spectral_gap']:.3f}, {row['seconds']:.1f} s"
            )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| setting | transfer accuracy | spectral gap | plausibility | robustness | render time |",
        "| - | -: | -: | -: | -: | -: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['transfer']:.3f} | {row['spectral_gap']:.3f} | {row['plausibility']:.2f} "
            f"| {row['robustness']:.2f} | {row['seconds']:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the ablation from the command line.

    Args:
        argv: arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="featvis ClassifierModule checkpoint to visualise")
    parser.add_argument(
        "--refs", nargs="+", required=True, help="reference model .pt files (quality.py train)"
    )
    parser.add_argument("--data-dir", default="data", help="folder containing cifar-10-batches-py")
    parser.add_argument("--diversity-layer", default="net.group2", help="layer of the diversity term (row 5)")
    parser.add_argument("--diversity-weight", type=float, default=RenderConfig.diversity_weight)
    parser.add_argument("--steps", type=int, default=RenderConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="nearest neighbours of the plausibility")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)

    model = load_classifier(args.ckpt)
    real_images, real_labels, _ = _real_test_set(args.data_dir)
    refs = _load_refs(args.refs)
    start = time.perf_counter()
    rows = run_ablation(
        model,
        refs,
        real_images,
        real_labels,
        args.diversity_layer,
        args.diversity_weight,
        args.steps,
        args.seed,
        args.k,
    )
    print()
    print(f"model: {args.ckpt}; references: {', '.join(name for name, _, _ in refs)}; {args.steps} steps")
    print(markdown_table(rows))
    print(f"(ablation took {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} threads)")
    _write_json({"ckpt": args.ckpt, "steps": args.steps, "seed": args.seed, "rows": rows}, args.json)
    return rows


if __name__ == "__main__":
    run_script(main)
