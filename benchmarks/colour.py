"""Why the class pictures come out grey: their contrast in each colour direction against real images'.

Renders every class of a featvis checkpoint with featvis's defaults, then without the colour prior
(``colour_weight: 0``, the render whose grey this study explained) and with one more change per row (the learning
rate, or the phase-only parameterisation with a given colour limit) and reports, beside real test images:

- ``contrast``: the images' standard deviation in the data's whitened colour basis (the model's own input
  space), per whitened channel; real images have 1 in each;
- ``mean colour spread``: how much the images' mean colours differ, the standard deviation over images of each
  image's mean in that basis (the "same blue-grey background" fault);
- ``colour distance`` (:func:`featvis.quality.colour_distance`) and ``spectral gap``
  (:func:`featvis.quality.spectral_gap`) to 1000 real test images, on 8-bit images as ``featvis render`` writes;
- the visualised model's mean probability of the target class;
- ``diversity vs real``: the within-class diversity of the pictures (:func:`featvis.quality.feature_diversity`,
  the mean cosine distance between a class's pictures in the visualised model's penultimate features) over that
  of 20 real test images per class in the same features (1: as varied as photographs of the class). The
  reference networks' features are the better judge (``benchmarks.quality``); this needs none.

Run from the repository root::

    python -m benchmarks.colour --ckpt <epoch ckpt> --data-dir ../shared/cifar10 [--sheet sheet.png]

The last row adds the diversity term (``--diversity-layer``, ``--diversity-weight``, default ``net.group2`` at 5,
the weight at which the ablation's diversity passes half of real images') to the phase-only defaults.

``--sheet`` writes a picture sheet, one class per row: four real test images, the defaults' four pictures, the
phase-only (``SPECTRA_LIMIT``) row's four and the last row's four.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import featvis.engine.spectrum as engine_spectrum
from benchmarks import common
from benchmarks.ablation import SPECTRA_IMAGES, quantise
from benchmarks.reference_models import cifar_folder
from featvis.cifar import read_split
from featvis.engine import RenderConfig, render
from featvis.model import load_classifier
from featvis.quality import (
    RGBInput,
    colour_distance,
    feature_diversity,
    penultimate_features,
    reference_spectrum,
    spectral_gap,
)

# (row label, RenderConfig settings, colour limit of the phase-only spectra or None). The rows after the first
# study the render without the colour prior, as it was when the study found why the pictures are grey.
PLAIN: dict[str, Any] = {"colour_weight": 0.0}
PHASE: dict[str, Any] = {"parameterisation": "phase", **PLAIN}
ROWS: list[tuple[str, dict[str, Any], float | None]] = [
    ("defaults (1/f Fourier, the colour prior)", {}, None),
    ("no colour prior (the defaults before it)", PLAIN, None),
    ("no colour prior, lr x2", {"lr": 2 * RenderConfig.lr, **PLAIN}, None),
    ("no colour prior, lr x4", {"lr": 4 * RenderConfig.lr, **PLAIN}, None),
    ("phase-only, limit half an 8-bit level", PHASE, 0.5 / 255),
    ("phase-only, limit 0.05 (SPECTRA_LIMIT)", PHASE, 0.05),
    ("phase-only, limit 0.1", PHASE, 0.1),
]


def colour_statistics(model_space: Tensor) -> dict[str, list[float]]:
    """Per-channel contrast and mean-colour spread of ``(N, C, H, W)`` images in the whitened basis."""
    return {
        "contrast": model_space.transpose(0, 1).flatten(1).std(dim=1).tolist(),
        "mean_colour_spread": model_space.mean(dim=(2, 3)).std(dim=0).tolist(),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the colour study from the command line.

    Args:
        argv: arguments; None reads ``sys.argv``.
    """
    parser = common.make_parser("benchmarks.colour", __doc__)
    parser.add_argument("--ckpt", required=True, help="featvis ClassifierModule checkpoint to visualise")
    parser.add_argument("--data-dir", default="data", help="folder containing cifar-10-batches-py")
    parser.add_argument("--steps", type=int, default=RenderConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument(
        "--sheet", help="write a picture sheet (PNG): real images | defaults | phase-only | + diversity term"
    )
    parser.add_argument(
        "--diversity-layer", default="net.group2", help="layer of the last row's diversity term"
    )
    parser.add_argument("--diversity-weight", type=float, default=5.0, help="weight of that diversity term")
    args = parser.parse_args(argv)

    model = load_classifier(args.ckpt).eval()
    real, labels, _ = common.real_test_set(args.data_dir)
    test_images = real  # the sheet's real images: the first four of each class
    shown: list[Tensor] = []  # the sheet's rendered groups, each (classes, 4, 3, H, W)
    rgb_model = RGBInput(model.net, model.colour)

    def diversity(images: Tensor) -> float:  # (classes, K, 3, H, W), within each class
        groups = torch.arange(images.shape[0]).repeat_interleave(images.shape[1])
        return feature_diversity(penultimate_features(rgb_model, images.flatten(0, 1)), groups)

    real_diversity = diversity(real[common.first_per_class(labels, 20)])
    real = real[:1000]
    spectrum = reference_spectrum(real, real.shape[-1])
    train, _ = read_split(cifar_folder(args.data_dir), train=True)
    pick = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(args.seed))
    spectra = train[pick[:SPECTRA_IMAGES]].float().div_(255)
    with torch.no_grad():
        real_row = {"name": "real test images", **colour_statistics(model.colour.to_model(real))}
    rows = [
        real_row
        | {
            "colour_distance": colour_distance(real[:40], real),
            "spectral_gap": spectral_gap(real[:40], spectrum),
        }
    ]
    default_limit = engine_spectrum.SPECTRA_LIMIT
    try:
        diverse = {"diversity_layer": args.diversity_layer, "diversity_weight": args.diversity_weight}
        last = (
            f"phase-only + diversity term (weight {args.diversity_weight:g})",
            PHASE | diverse,
            default_limit,
        )
        for name, settings, limit in [*ROWS, last]:
            engine_spectrum.SPECTRA_LIMIT = default_limit if limit is None else limit
            config = RenderConfig(steps=args.steps, seed=args.seed).replace(**settings)
            result = render(model, config=config, spectra=spectra)
            rgb = quantise(result.rgb.flatten(0, 1))
            if not settings or limit == default_limit:  # the defaults and the phase-only defaults
                shown.append(result.rgb)
            classes = torch.tensor([t.index for t in result.targets]).repeat_interleave(
                config.images_per_target
            )
            probs = torch.softmax(result.logits.flatten(0, 1).float(), dim=-1)
            with torch.no_grad():
                stats = colour_statistics(model.colour.to_model(rgb))
            rows.append(
                {
                    "name": name,
                    **stats,
                    "colour_distance": colour_distance(rgb, real),
                    "spectral_gap": spectral_gap(rgb, spectrum),
                    "target_probability": float(probs[torch.arange(len(classes)), classes].mean()),
                    "diversity_vs_real": diversity(quantise(result.rgb)) / real_diversity,
                    "seconds": result.seconds,
                }
            )
            print(
                f"{name}: colour distance {rows[-1]['colour_distance']:.3f}, gap {rows[-1]['spectral_gap']:.3f}"
            )
    finally:
        engine_spectrum.SPECTRA_LIMIT = default_limit
    print()
    print(markdown_table(rows))
    common.write_json({"ckpt": args.ckpt, "steps": args.steps, "seed": args.seed, "rows": rows}, args.json)
    if args.sheet:
        groups = list(zip(("1/f ", "phase ", "+div "), shown, strict=True))
        common.picture_sheet(args.sheet, test_images, labels, groups, model.class_names)
        print(f"wrote {args.sheet}")
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (the real images' row first: 40 of them against the 1000)."""

    def triple(values: list[float]) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    lines = [
        "| images | contrast per whitened channel | mean colour spread | colour distance | spectral gap "
        "| target probability | diversity vs real |",
        "| - | -: | -: | -: | -: | -: | -: |",
    ]
    for row in rows:
        probability = f"{row['target_probability']:.3f}" if "target_probability" in row else "-"
        spread = f"{row['diversity_vs_real']:.2f}" if "diversity_vs_real" in row else "1"
        lines.append(
            f"| {row['name']} | {triple(row['contrast'])} | {triple(row['mean_colour_spread'])} "
            f"| {row['colour_distance']:.3f} | {row['spectral_gap']:.3f} | {probability} | {spread} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    common.run_script(main)
