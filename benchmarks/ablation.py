"""Ablation of the render engine: what each ingredient of the method adds, measured in one run on one model.

Renders every class of a featvis checkpoint with six cumulative settings and scores each set with the same
reference classifiers (``python -m benchmarks.quality train``) and the same real test images::

    1. pixel only          pixel parameterisation, RGB colours, no augmentation, no diversity
    2. + augmentations     the default random transforms inside the forward pass
    3. + Fourier           1/f-scaled Fourier parameterisation (``1 / f ** 1.25``, the default exponent)
    4. + decorrelated      colours optimised in the data's decorrelated basis
    5. + colour prior      the pictures' pooled pixel colours pulled towards the data's (``colour_weight``; =
                           featvis's defaults)
    6. + diversity         Gram-matrix diversity term on a hidden layer
       (feature repulsion) the same term on the layer's whole activation maps (``diversity_kind="features"``)

and, beside row 5, the alternatives to featvis's defaults (``ALTERNATIVES``), each changing one setting of it:

    phase-only spectra     each image keeps the amplitude spectrum of a real training image and only its phase
                           is optimised (``parameterisation="phase"``, as MACO does) instead of the 1/f prior
    phase-only, mean       every image keeps the mean amplitude spectrum of the training images (MACO's own
                           choice, ``phase_spectrum="mean"``)
    data-scaled Fourier    the amplitudes stay free, but the Fourier scale is the training images' mean spectrum
                           per colour channel instead of 1/f (``fourier_scale="data"``)
    1/f, 1/f^1.5           the Fourier scale's exponent (``decay``) at 1, the plain 1/f prior (the default
                           until issue 15's measurements), and at 1.5 instead of the default's 1.25
    layouts                each picture starts from the coarse layout of a training image (its frequencies up
                           to 2.25 cycles per image), whole or at half strength, added to the random start
                           (``init_layout`` 1 and 0.5)
    colour prior x2        the colour prior at twice the default weight

and then phase-only pictures with the diversity term at ``DIVERSITY_SCALES`` times ``--diversity-weight`` (the
trade-off between within-class diversity and recognisability), acting in all the steps and, again, in the first
half only (``DIVERSITY_UNTIL``). ``--only WORD ...`` renders the rows whose name
contains one of the words (``=NAME``: the row of exactly that name, e.g. ``"=+ diversity"``).

Every row uses the same seed, steps and learning rate; only the named ingredient changes. Images are rounded to
8 bits first, exactly as ``featvis render`` writes them, and scored by ``featvis.quality.score_render``. Heavy: on
a shared CPU, run it from the repository root under the CPU lock::

    flock /tmp/featvis-cpu.lock python -m benchmarks.ablation --ckpt last.ckpt --refs runs/ref/*.pt \\
        --data-dir ../shared/cifar10

It prints a Markdown table (transfer accuracy, spectral gap, plausibility, colour distance to real test images,
within-class diversity in the visualised model's features and, relative to real images', in the references',
robustness, render seconds); ``--json`` writes it. Without ``--refs`` transfer, plausibility and diversity vs real
are not measured (nan); the other columns are. ``--sheet PATH`` also writes a picture sheet: per class, four real
test images beside each rendered row's pictures.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import yaml
from torch import Tensor

from benchmarks import common
from benchmarks.reference_models import cifar_folder
from featvis.cifar import read_split
from featvis.engine import RenderConfig, render
from featvis.model import load_classifier
from featvis.quality import reference_spectrum

# (row label, the RenderConfig settings of the row); each row adds one ingredient to the previous.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    (
        "pixel only",
        {"parameterisation": "pixel", "decorrelate": False, "augment": False, "colour_weight": 0.0},
    ),
    (
        "+ augmentations",
        {"parameterisation": "pixel", "decorrelate": False, "augment": True, "colour_weight": 0.0},
    ),
    (
        "+ Fourier",
        {"parameterisation": "fourier", "decorrelate": False, "augment": True, "colour_weight": 0.0},
    ),
    (
        "+ decorrelated colour",
        {"parameterisation": "fourier", "decorrelate": True, "augment": True, "colour_weight": 0.0},
    ),
    (
        "+ colour prior (defaults)",
        {
            "parameterisation": "fourier",
            "decorrelate": True,
            "augment": True,
            "colour_weight": RenderConfig.colour_weight,
        },
    ),
]


# (row label, the one setting of featvis's defaults (row 5) that the row changes).
ALTERNATIVES: list[tuple[str, dict[str, Any]]] = [
    ("defaults, phase-only spectra of training images", {"parameterisation": "phase"}),
    (
        "defaults, phase-only with the mean spectrum (MACO)",
        {"parameterisation": "phase", "phase_spectrum": "mean"},
    ),
    ("defaults, Fourier scaled by the data's mean spectrum", {"fourier_scale": "data"}),
    ("defaults, the plain 1/f spectrum (decay 1)", {"decay": 1.0}),
    ("defaults, steeper spectrum 1/f^1.5", {"decay": 1.5}),
    ("defaults, started from training images' layouts", {"init_layout": 1.0}),
    ("defaults, started from half of training images' layouts", {"init_layout": 0.5}),
    ("defaults, colour prior at twice the weight", {"colour_weight": 2 * RenderConfig.colour_weight}),
]
#: Training images whose amplitude spectra the phase-only rows keep, or whose layouts the layout row starts from
#: (drawn with the ablation's seed).
SPECTRA_IMAGES = 2000


#: Weights of the diversity term on phase-only pictures, as multiples of ``--diversity-weight``: the trade-off
#: between within-class diversity and recognisability.
DIVERSITY_SCALES = (1.0, 2.0, 3.0, 4.0)
#: Fractions of the steps the diversity term acts in (``diversity_until``): 1 for the whole render, 0.5 for the
#: first half, after which the pictures are optimised for their targets alone.
DIVERSITY_UNTIL = (1.0, 0.5)


def variants(diversity_layer: str, diversity_weight: float) -> list[tuple[str, dict[str, Any]]]:
    """The cumulative settings of the ablation, ending with the diversity term on ``diversity_layer``, then the
    alternatives to the defaults, then phase-only pictures with the diversity term at growing weights."""
    defaults = VARIANTS[-1][1]
    diverse = {"diversity_layer": diversity_layer, "diversity_weight": diversity_weight}
    alternatives = [(name, dict(defaults, **change)) for name, change in ALTERNATIVES]
    phase = [
        (
            f"phase-only + diversity term (weight {diversity_weight * scale:g}"
            + (")" if until == 1.0 else f", first {until:.0%} of the steps)"),
            dict(defaults, **diverse)
            | {"parameterisation": "phase", "diversity_weight": diversity_weight * scale}
            | ({} if until == 1.0 else {"diversity_until": until}),
        )
        for until in DIVERSITY_UNTIL
        for scale in DIVERSITY_SCALES
    ]
    features = dict(defaults, **diverse, diversity_kind="features")
    return [
        *VARIANTS,
        ("+ diversity", dict(defaults, **diverse)),
        ("+ diversity, feature repulsion", features),
        *alternatives,
        *phase,
    ]


def settings_of(pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.01", ...]`` as RenderConfig settings (values read as YAML), checked against its fields."""
    fields = {field.name for field in dataclasses.fields(RenderConfig)}
    settings = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or key not in fields:
            raise ValueError(
                f"--set {pair!r}: give KEY=VALUE with KEY one of RenderConfig's {sorted(fields)}."
            )
        settings[key] = yaml.safe_load(value)
    return settings


def quantise(rgb: Tensor) -> Tensor:
    """Round RGB in [0, 1] to 8-bit levels, as a PNG file stores it."""
    return (rgb.float().clamp(0, 1) * 255).round() / 255


def run_ablation(
    model: torch.nn.Module,
    references: list[common.Reference],
    real_images: Tensor,
    real_labels: Tensor,
    diversity_layer: str,
    diversity_weight: float = RenderConfig.diversity_weight,
    config: RenderConfig | None = None,
    k: int = 10,
    log=print,
    spectra: Tensor | None = None,
    only: list[str] | None = None,
    pictures: list[Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Render and score every variant.

    Args:
        model: the featvis ``ClassifierModule`` to visualise (with ``net``, ``colour`` and ``class_names``).
        references: reference classifiers (``benchmarks.common.load_references``).
        real_images: real test images, RGB in [0, 1].
        real_labels: their classes.
        diversity_layer: layer of the diversity term in the last row.
        diversity_weight: its weight.
        config: the settings every row shares (steps, seed, learning rate, ...); None: the defaults. Each row
            replaces its own ingredients in it.
        k: nearest real neighbours of the plausibility.
        log: receives one line per finished row; None is silent.
        spectra: training images (RGB in [0, 1]) whose amplitude spectra the phase-only rows keep.
        only: render only the rows whose name contains one of these (or, for ``"=NAME"``, is NAME); None: all.
        pictures: if given, each row's pictures are appended to it, ``(targets, images_per_target, 3, H, W)``
            rounded to 8 bits as scored.

    Returns:
        One dict per row: ``name``, ``settings``, ``seconds``, ``transfer``, ``transfer_per_model``,
        ``spectral_gap``, ``plausibility``, ``colour_distance``, ``diversity`` (in the visualised model's
        features), ``diversity_vs_real`` (in the references' features, relative to the real test images'; NaN
        without references), ``robustness`` (under the visualised model),
        ``mean_value`` (final objective).
    """
    config = RenderConfig() if config is None else config
    # Warm-up, so the first row's time is not the allocator's; with the spectra, for a --set that takes them.
    render(model, config=config.replace(steps=2), spectra=spectra)
    spectrum = reference_spectrum(real_images, real_images.shape[-1])
    cache: dict[str, Tensor] = {}
    rows = []
    for name, settings in variants(diversity_layer, diversity_weight):
        if only and not any(name == part[1:] if part.startswith("=") else part in name for part in only):
            continue
        result = render(model, config=config.replace(**settings), spectra=spectra)
        classes = [target.index for target in result.targets]
        rgb = quantise(result.rgb)
        if pictures is not None:
            pictures.append(rgb)
        scores = common.quality_scores(
            rgb,
            classes,
            references,
            (real_images, real_labels),
            spectrum,
            classifier=model,
            real_features=cache,
            k=k,
        )
        row = {
            "name": name,
            "settings": dict(settings),
            "seconds": result.seconds,
            "transfer": scores["transfer"]["mean"],
            "target_prob": scores["target_prob"],
            "transfer_per_model": {key: v for key, v in scores["transfer"].items() if key != "mean"},
            "spectral_gap": scores["spectral_gap"],
            "plausibility": scores["plausibility"]["mean"],
            "colour_distance": scores["colour_distance"],
            "diversity": scores["diversity"],
            "diversity_vs_real": scores["diversity_vs_real"],
            "robustness": scores["robustness"],
            "mean_value": float(result.values.mean()),
        }
        rows.append(row)
        if log is not None:
            log(
                f"{name}: transfer {row['transfer']:.3f}, gap {row['spectral_gap']:.3f}, colour distance "
                f"{row['colour_distance']:.3f}, {row['seconds']:.1f} s"
            )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| setting | transfer accuracy | target prob. (refs) | spectral gap | plausibility | colour distance "
        "| diversity | diversity vs real (refs) | robustness | render time |",
        "| - | -: | -: | -: | -: | -: | -: | -: | -: | -: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['transfer']:.3f} | {row['target_prob']:.3f} | {row['spectral_gap']:.3f} "
            f"| {row['plausibility']:.2f} "
            f"| {row['colour_distance']:.3f} | {row['diversity']:.2f} | {row['diversity_vs_real']:.2f} "
            f"| {row['robustness']:.2f} | {row['seconds']:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the ablation from the command line.

    Args:
        argv: arguments; None reads ``sys.argv``.
    """
    parser = common.make_parser("benchmarks.ablation", __doc__)
    parser.add_argument("--ckpt", required=True, help="featvis ClassifierModule checkpoint to visualise")
    parser.add_argument(
        "--refs",
        nargs="*",
        default=[],
        help="reference models (.pt of benchmarks.quality train, or featvis .ckpt); none: no transfer, plausibility",
    )
    parser.add_argument("--data-dir", default="data", help="folder containing cifar-10-batches-py")
    parser.add_argument("--diversity-layer", default="net.group2", help="layer of the diversity term (row 6)")
    parser.add_argument("--diversity-weight", type=float, default=RenderConfig.diversity_weight)
    parser.add_argument("--steps", type=int, default=RenderConfig.steps)
    parser.add_argument("--images-per-target", type=int, default=RenderConfig.images_per_target)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="nearest neighbours of the plausibility")
    parser.add_argument(
        "--only",
        nargs="*",
        help="render only the rows whose name contains one of these; =NAME: exactly that row",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="RenderConfig settings for every row, e.g. lr=0.01 init_std=0.05 (YAML values)",
    )
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument(
        "--sheet",
        help="write a picture sheet (PNG): per class, four real test images, then each rendered row's pictures",
    )
    args = parser.parse_args(argv)

    model = load_classifier(args.ckpt)
    real_images, real_labels, _ = common.real_test_set(args.data_dir)
    references = common.load_references(args.refs) if args.refs else []
    train_images, _ = read_split(cifar_folder(args.data_dir), train=True)
    pick = torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(args.seed))
    spectra = train_images[pick[:SPECTRA_IMAGES]].float().div_(255)
    start = time.perf_counter()
    pictures: list[Tensor] = []
    rows = run_ablation(
        model,
        references,
        real_images,
        real_labels,
        args.diversity_layer,
        args.diversity_weight,
        RenderConfig(
            steps=args.steps,
            images_per_target=args.images_per_target,
            seed=args.seed,
            **settings_of(args.set),
        ),
        args.k,
        spectra=spectra,
        only=args.only,
        pictures=pictures,
    )
    print()
    names = ", ".join(name for name, _, _ in references) or "none"
    classes = len(model.class_names)
    print(
        f"model: {args.ckpt} ({classes} classes x {args.images_per_target} images, {args.steps} steps, "
        f"seed {args.seed}{''.join(f', {pair}' for pair in args.set)}); references: {names}"
    )
    print(markdown_table(rows))
    print(f"(ablation took {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} threads)")
    settings = {"steps": args.steps, "images_per_target": args.images_per_target, "seed": args.seed}
    settings |= settings_of(args.set)
    common.write_json({"ckpt": args.ckpt, **settings, "rows": rows}, args.json)
    if args.sheet:
        groups = [(f"r{r + 1}.", images) for r, images in enumerate(pictures)]
        common.picture_sheet(args.sheet, real_images, real_labels, groups, model.class_names)
        print(f"wrote {args.sheet}: " + "; ".join(f"r{r + 1} = {row['name']}" for r, row in enumerate(rows)))
    return rows


if __name__ == "__main__":
    common.run_script(main)
