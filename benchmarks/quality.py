"""Quality of feature visualisations, scored by reference classifiers that featvis never optimised against.

Three modes, run from the repository root::

    # Train the reference classifiers (heavy: run under the CPU lock; 4-6 minutes each on two idle cores).
    python -m benchmarks.quality train --data-dir ../shared/cifar10

    # Score a folder of PNGs laid out DIR/<class name>/<i>.png (32x32 RGB), e.g. written by `featvis render`.
    python -m benchmarks.quality score --pngs DIR --refs runs/ref/*.pt --data-dir ../shared/cifar10

    # Score every epoch of a training run: the PNGs FeatureVisCallback wrote, <log_dir>/featvis/epoch_<NNN>/.
    # With several --run folders (the epochs rendered again with other seeds): the mean per epoch, and the last
    # epoch against the best one, with the best chosen on half the seeds and scored on the other half.
    python -m benchmarks.quality score-run --run <log_dir> [<seed dir> ...] --refs runs/ref/*.pt --data-dir ../shared/cifar10

    # Calibration: score real test images (and uniform noise) the same way.
    python -m benchmarks.quality score-real --refs runs/ref/*.pt --data-dir ../shared/cifar10

    # The real test images' own trade-off: diversity of each class's k surest images against their probability.
    python -m benchmarks.quality frontier --refs runs/ref/*.pt --data-dir ../shared/cifar10

``score`` reports, per reference model and averaged: transfer accuracy (fraction classified as the folder's
class), plausibility (nearest-real-neighbour distance in the reference model's penultimate features, relative to
real images; 1.0 for real images) and the spectral gap to the test set (0.02 for 40 real images, 1.0 for uniform
noise). With ``--ckpt`` it also reports the robustness and feature diversity of the images under the featvis
classifier they were rendered from (diversity needs the same number of images, at least two, in every class
folder, as ``featvis render`` writes them). All numbers come from ``featvis.quality.score_render``, the routine
the callback and ``featvis render --metrics`` use. ``--json OUT`` writes them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import (
    DEFAULT_REF_DIR,
    load_references,
    make_parser,
    quality_scores,
    real_test_set,
    run_script,
    write_json,
)
from benchmarks.reference_models import ARCHITECTURES, train_reference
from featvis.engine import resolve_autocast
from featvis.images import load_png, safe_name, write_image_folder
from featvis.quality import confidence_frontier, penultimate_features, reference_spectrum


def load_png_folder(
    folder: str | Path, class_names: list[str], skip_others: bool = False
) -> tuple[Tensor, Tensor, list[str]]:
    """Read ``folder/<class name>/<i>.png`` images.

    Args:
        folder: the image folder; every subfolder must be named after a class (as ``featvis.images.safe_name``
            spells it).
        class_names: class names in label order.
        skip_others: ignore subfolders not named after a class (a callback epoch folder's ``channels``) instead
            of refusing them.

    Returns:
        RGB images ``(N, 3, H, W)`` in [0, 1], their class indices ``(N,)`` and their paths (as strings).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist; pass the folder that `featvis render` wrote."
        )
    index_of = {safe_name(name): index for index, name in enumerate(class_names)}
    images, targets, paths = [], [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index_of:
            if skip_others:
                continue
            raise ValueError(
                f"folder {sub} is not named after a class; expected one of {sorted(index_of)} "
                "(class names from batches.meta)."
            )
        files = sorted(sub.glob("*.png"), key=lambda p: (len(p.stem), p.stem))
        for path in files:
            image = load_png(path)
            if images and image.shape != images[0].shape:
                raise ValueError(
                    f"{path} is {tuple(image.shape[1:])} pixels but {paths[0]} is {tuple(images[0].shape[1:])}; "
                    "all images must have the same size (32x32 for CIFAR-10)."
                )
            images.append(image)
            targets.append(index_of[sub.name])
            paths.append(str(path))
    if not images:
        raise ValueError(f"no PNG images found under {folder}/<class name>/*.png.")
    return torch.stack(images), torch.tensor(targets, dtype=torch.long), paths


def as_render(images: Tensor, targets: Tensor) -> tuple[Tensor, list[int]]:
    """Images and their classes laid out as a render's ``(T, K, 3, H, W)`` for ``featvis.quality.score_render``.

    With the same number of images in every class (as ``featvis render`` writes them) each class is one row of
    ``K`` images, so the diversity is measured within each class; otherwise every image is a row of its own.

    Args:
        images: ``(N, 3, H, W)`` RGB images in [0, 1].
        targets: ``(N,)`` the class of each image.

    Returns:
        The images as ``(T, K, 3, H, W)`` and the class of each of the ``T`` rows.
    """
    classes = torch.unique(targets).tolist()
    groups = [images[targets == cls] for cls in classes]
    if len({group.shape[0] for group in groups}) == 1:
        return torch.stack(groups), classes
    return images.unsqueeze(1), targets.tolist()


def format_table(result: dict, title: str) -> str:
    """The numbers of :func:`benchmarks.common.quality_scores` as a plain-text table, one row per reference model."""
    names = [name for name in result["transfer"] if name != "mean"]
    width = max([len("mean"), *map(len, names)]) + 2
    lines = [
        f"{title} ({result['images']} images)",
        f"{'reference model':<{width}}{'test acc':>10}{'transfer':>10}{'plausib.':>10}",
    ]
    for name in names:
        lines.append(
            f"{name:<{width}}{result['reference_test_accuracy'][name]:>10.3f}"
            f"{result['transfer'][name]:>10.3f}{result['plausibility'][name]:>10.3f}"
        )
    lines.append(
        f"{'mean':<{width}}{'':>10}{result['transfer']['mean']:>10.3f}{result['plausibility']['mean']:>10.3f}"
    )
    lines.append(f"spectral gap vs test set: {result['spectral_gap']:.3f}")
    if "robustness" in result:
        lines.append(f"robustness (featvis classifier): {result['robustness']:.3f}")
        lines.append(f"diversity (featvis classifier):  {result['diversity']:.3f}")
    return "\n".join(lines)


def _sample_per_class(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Indices of ``per_class`` random images of each class, class-major."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == label).flatten()
        if members.numel() < per_class:
            raise ValueError(f"class {label} has only {members.numel()} test images; lower --per-class.")
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.stack(chosen)


def _cmd_train(args: argparse.Namespace) -> dict:
    if len(args.archs) != len(args.seeds):
        raise ValueError(
            f"--archs has {len(args.archs)} entries but --seeds {len(args.seeds)}; give one seed per architecture."
        )
    summary = {}
    # bf16 only where the device runs it natively: CPUs with AVX2 only emulate it, about 20x slower.
    device = torch.device(args.device)
    bf16 = resolve_autocast("auto", device, torch.float32) is not None
    for arch, seed in zip(args.archs, args.seeds, strict=True):
        out = Path(args.out_dir) / f"{arch}_seed{seed}.pt"
        record = train_reference(
            arch, seed, args.data_dir, args.epochs, out, lr=args.lr, bf16=bf16, device=device
        )
        summary[out.stem] = {
            "test_accuracy": record["test_accuracy"],
            "train_seconds": record["train_seconds"],
        }
        print(f"saved {out}: test accuracy {record['test_accuracy']:.4f}, {record['train_seconds']:.0f} s")
    write_json(summary, args.json)
    return summary


def _cmd_score(args: argparse.Namespace) -> dict:
    real_images, real_labels, class_names = real_test_set(args.data_dir)
    images, targets, _ = load_png_folder(args.pngs, class_names)
    if images.shape[-2:] != real_images.shape[-2:]:
        raise ValueError(
            f"the images in {args.pngs} are {tuple(images.shape[-2:])} pixels but the test images are "
            f"{tuple(real_images.shape[-2:])}; render at the data's size."
        )
    classifier = None
    if args.ckpt:
        from featvis.model import load_classifier

        classifier = load_classifier(args.ckpt)
    rgb, classes = as_render(images, targets)
    result = quality_scores(
        rgb,
        classes,
        load_references(args.refs),
        (real_images, real_labels),
        reference_spectrum(real_images, real_images.shape[-1]),
        classifier=classifier,
        k=args.k,
    )
    print(format_table(result, f"visualisations in {args.pngs}"))
    write_json(result, args.json)
    return result


#: The measures on which issue 15 asks the last epoch to match the run's best one, and which way is better.
EPOCH_MEASURES = {"target_prob": "higher", "spectral_gap": "lower", "plausibility": "lower"}


def _measure(scores: dict, name: str) -> float:
    value = scores[name]
    return float(value["mean"] if isinstance(value, dict) else value)


def _seed_epoch_table(runs: list[dict[str, dict]], epochs: list[str], name: str) -> torch.Tensor:
    """``(seeds, epochs)``: one measure of every run at every epoch."""
    return torch.tensor([[_measure(run[e], name) for e in epochs] for run in runs])


def last_against_best(runs: list[dict[str, dict]]) -> dict[str, dict[str, float | str]]:
    """Whether the last epoch's pictures are as good as the run's best epoch's, over several render seeds.

    The best of many epochs, each scored on a few seeds, is biased towards a lucky draw, so beside the plain
    comparison (best epoch and its mean over all seeds) the best epoch is also chosen on one half of the seeds and
    scored on the other half, both ways round: that held-out difference is what the chosen epoch really leads by.

    Args:
        runs: one dict per render seed, ``{"epoch_NNN": scores}`` as :func:`_cmd_score_run` returns for one run;
            every run has the same epochs (epoch 0, before training, is left out of the choice).

    Returns:
        Per measure of :data:`EPOCH_MEASURES`: ``last`` (mean over seeds), ``best_epoch``, ``best`` (its mean),
        ``lead`` (how much better the best epoch's mean is, >= 0), ``lead_se`` (standard error of that
        difference), ``held_out_lead`` (the split-half lead; noise gives about 0) and ``better`` (the direction).
    """
    epochs = sorted(name for name in runs[0] if name != "epoch_000")
    out: dict[str, dict[str, float | str]] = {}
    for measure, better in EPOCH_MEASURES.items():
        sign = 1.0 if better == "higher" else -1.0
        # (seeds, epochs) with higher = better, so that one formula serves both directions.
        values = sign * _seed_epoch_table(runs, epochs, measure)
        means = values.mean(0)
        best = int(means.argmax())
        diff = values[:, best] - values[:, -1]
        halves = (values[0::2], values[1::2]) if len(runs) > 1 else (values, values)
        held_out = [
            float(scored[:, int(chooser.mean(0).argmax())].mean() - scored[:, -1].mean())
            for chooser, scored in (halves, halves[::-1])
        ]
        out[measure] = {
            "last": sign * float(means[-1]),
            "best_epoch": float(int(epochs[best].split("_")[1])),
            "best": sign * float(means[best]),
            "lead": float(diff.mean()),
            "lead_se": float(diff.std() / len(runs) ** 0.5) if len(runs) > 1 else float("nan"),
            "held_out_lead": sum(held_out) / 2,
            "better": better,
        }
    return out


def at_equal_diversity(runs: list[dict[str, dict]]) -> dict[str, dict[str, float | str]]:
    """Each epoch's measures at the run's mean diversity: the last epoch against the best one, diversity held equal.

    Within one epoch (one model) the render seeds differ only in their draw, and a seed whose four pictures of a
    class spread further apart scores lower on recognisability and plausibility. So an epoch whose pictures came
    out more diverse looks worse on those measures for that reason alone. Per measure, a straight line on
    ``diversity_vs_real`` is fitted to the seed-to-seed differences within each epoch (its slope is the same for
    every epoch; the epochs' own levels are free), and every picture set is moved along it to the mean diversity
    of the run before the epochs are compared.

    Args:
        runs: one dict per render seed, ``{"epoch_NNN": scores}`` as :func:`_cmd_score_run` returns for one run;
            every run has the same epochs, at least two runs (epoch 0, before training, is left out).

    Returns:
        Per measure of :data:`EPOCH_MEASURES`: ``within_r`` (correlation with diversity within an epoch),
        ``per_tenth`` (change of the measure per +0.1 diversity), ``last`` and ``best`` (epoch means at equal
        diversity), ``best_epoch``, ``lead`` (how much better the best epoch is, >= 0), ``lead_se`` (standard
        error of that paired difference) and ``better``.
    """
    epochs = sorted(name for name in runs[0] if name != "epoch_000")
    diversity = _seed_epoch_table(runs, epochs, "diversity_vs_real")
    spread = diversity - diversity.mean(0)  # within-epoch differences between seeds
    out: dict[str, dict[str, float | str]] = {}
    for measure, better in EPOCH_MEASURES.items():
        values = _seed_epoch_table(runs, epochs, measure)
        deviation = values - values.mean(0)
        ss, covariance = float((spread * spread).sum()), float((spread * deviation).sum())
        slope = covariance / ss if ss > 0 else 0.0
        norm = ss * float((deviation * deviation).sum())
        # (seeds, epochs), every picture set moved to the run's mean diversity.
        level = values - slope * (diversity - diversity.mean())
        sign = 1.0 if better == "higher" else -1.0
        means = sign * level.mean(0)
        best = int(means.argmax())
        diff = sign * (level[:, best] - level[:, -1])
        out[measure] = {
            "within_r": covariance / norm**0.5 if norm > 0 else float("nan"),
            "per_tenth": 0.1 * slope,
            "last": float(level[:, -1].mean()),
            "best_epoch": float(int(epochs[best].split("_")[1])),
            "best": float(level[:, best].mean()),
            "lead": float(diff.mean()),
            "lead_se": float(diff.std() / len(runs) ** 0.5),
            "better": better,
        }
    return out


def _epoch_folders(run: str) -> list[Path]:
    """The ``epoch_<NNN>`` folders of a run's log_dir (or of its ``featvis/`` folder); none is an error."""
    folder = Path(run) / "featvis" if (Path(run) / "featvis").is_dir() else Path(run)
    epochs = sorted(p for p in folder.glob("epoch_[0-9][0-9][0-9]") if p.is_dir())
    if not epochs:
        raise FileNotFoundError(
            f"no epoch_<NNN> folders in {folder}; pass a run's log_dir (holding featvis/epoch_000/ ...)."
        )
    return epochs


def _score_per_epoch(epochs: list[Path], context: dict, k: int) -> dict[str, dict]:
    """Each ``epoch_<NNN>`` folder scored like ``score``."""
    results: dict[str, dict] = {}
    for path in epochs:
        images, targets, _ = load_png_folder(path, context["class_names"], skip_others=True)
        rgb, classes = as_render(images, targets)
        results[path.name] = quality_scores(
            rgb,
            classes,
            context["references"],
            context["real"],
            context["spectrum"],
            real_features=context["cache"],
            k=k,
        )
    return results


def _epoch_row(label: str, scores: dict) -> str:
    return (
        f"| {label} | {scores['transfer']['mean']:.3f} | {scores['target_prob']:.3f} | "
        f"{scores['spectral_gap']:.3f} | {scores['plausibility']['mean']:.2f} | "
        f"{scores['colour_distance']:.3f} | {scores['diversity_vs_real']:.2f} |"
    )


def _mean_scores(runs: list[dict], epoch: str) -> dict:
    def mean(key: str, sub: str | None = None) -> float:
        return sum(float(r[epoch][key][sub] if sub else r[epoch][key]) for r in runs) / len(runs)

    return {
        "transfer": {"mean": mean("transfer", "mean")},
        "plausibility": {"mean": mean("plausibility", "mean")},
        **{key: mean(key) for key in ("target_prob", "spectral_gap", "colour_distance", "diversity_vs_real")},
    }


def _cmd_score_run(args: argparse.Namespace) -> dict:
    if not args.refs:
        raise ValueError(
            "score-run needs --refs: transfer, target probability and plausibility come from them."
        )
    folders = [_epoch_folders(run) for run in args.run]  # every run is checked before the slow scoring starts
    real_images, real_labels, class_names = real_test_set(args.data_dir)
    context = {
        "class_names": class_names,
        "references": load_references(args.refs),
        "real": (real_images, real_labels),
        "spectrum": reference_spectrum(real_images, real_images.shape[-1]),
        "cache": {},
    }
    header = [
        "| epoch | transfer | target prob. | spectral gap | plausibility | colour distance | diversity vs real |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    runs = []
    for epochs in folders:
        runs.append(_score_per_epoch(epochs, context, args.k))
        rows = [_epoch_row(str(int(name.split("_")[1])), scores) for name, scores in runs[-1].items()]
        title = f"visualisations of {epochs[0].parent}, per epoch (epoch 0: before training)"
        print("\n".join([title, "", *header, *rows]))
    if len(runs) == 1:
        write_json(runs[0], args.json)
        return runs[0]
    epochs = sorted(set.intersection(*(set(run) for run in runs)))
    runs = [{epoch: run[epoch] for epoch in epochs} for run in runs]
    means = {epoch: _mean_scores(runs, epoch) for epoch in epochs}
    rows = [_epoch_row(str(int(epoch.split("_")[1])), scores) for epoch, scores in means.items()]
    print("\n".join(["", f"mean of {len(runs)} runs (render seeds), per epoch", "", *header, *rows]))
    comparison = last_against_best(runs) if len(epochs) > 2 else {}
    if comparison:
        print(
            f"\nthe last epoch against the best one, {len(runs)} runs; lead: how much better the best epoch is"
        )
        print("| measure | last epoch | best epoch | its mean | lead (SE) | held-out lead |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for measure, c in comparison.items():
            print(
                f"| {measure} ({c['better']} is better) | {c['last']:.3f} | {int(c['best_epoch'])} | "
                f"{c['best']:.3f} | {c['lead']:.3f} ({c['lead_se']:.3f}) | {c['held_out_lead']:.3f} |"
            )
    matched = at_equal_diversity(runs) if comparison else {}
    if matched:
        print(
            "\nat equal diversity (each picture set moved along the within-epoch line on diversity vs real to the"
            " run's mean diversity)"
        )
        print(
            "| measure | r with diversity | per +0.1 diversity | last epoch | best epoch | its level | lead (SE) |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for measure, c in matched.items():
            print(
                f"| {measure} ({c['better']} is better) | {c['within_r']:.2f} | {c['per_tenth']:+.4f} | "
                f"{c['last']:.3f} | {int(c['best_epoch'])} | {c['best']:.3f} | {c['lead']:.3f} ({c['lead_se']:.3f}) |"
            )
    result = {"runs": runs, "mean": means, "last_against_best": comparison, "at_equal_diversity": matched}
    write_json(result, args.json)
    return result


def _cmd_score_real(args: argparse.Namespace) -> dict:
    real_images, real_labels, class_names = real_test_set(args.data_dir)
    references = load_references(args.refs)
    chosen = _sample_per_class(real_labels, args.per_class, args.seed)  # (classes, per_class)
    # The sampled images leave the reference set, so each is compared with other real images only.
    keep = torch.ones(real_labels.shape[0], dtype=torch.bool)
    keep[chosen.flatten()] = False
    rest = (real_images[keep], real_labels[keep])
    spectrum = reference_spectrum(rest[0], rest[0].shape[-1])
    noise = torch.rand(chosen.numel(), 3, 32, 32, generator=torch.Generator().manual_seed(args.seed + 1))
    results, cache = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, rgb in (
            ("real", real_images[chosen]),
            ("uniform_noise", noise.view(*chosen.shape, 3, 32, 32)),
        ):
            # Round-trip through PNG files exactly as `score` reads rendered visualisations.
            folder = Path(tmp) / kind
            write_image_folder(rgb, class_names, folder)
            images, classes = as_render(*load_png_folder(folder, class_names)[:2])
            results[kind] = quality_scores(
                images, classes, references, rest, spectrum, real_features=cache, k=args.k
            )
            print(format_table(results[kind], f"{kind} ({args.per_class} per class, seed {args.seed})"))
            print()
    write_json(results, args.json)
    return results


def _cmd_frontier(args: argparse.Namespace) -> dict:
    real_images, real_labels, _ = real_test_set(args.data_dir)
    results = {}
    for name, model, _ in load_references(args.refs):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probs = torch.cat(
                [model(real_images[i : i + 500]).softmax(1) for i in range(0, real_images.shape[0], 500)]
            )
        model.train(was_training)
        target = probs.gather(1, real_labels[:, None]).squeeze(1)
        features = penultimate_features(model, real_images)
        rows = confidence_frontier(features, target, real_labels, args.per_class)
        accuracy = float((probs.argmax(1) == real_labels).float().mean())
        results[name] = {"accuracy": accuracy, "rows": rows}
        print(
            f"{name} (test accuracy {accuracy:.3f}; mean target probability {float(target.mean()):.3f}, "
            f"highest {float(target.max()):.3f}; {int((target >= 0.98).sum())} images at 0.98 or more)"
        )
        print("| surest images per class | mean target prob. | lowest target prob. | diversity vs real |")
        print("| ---: | ---: | ---: | ---: |")
        for row in rows:
            print(
                f"| {int(row['per_class'])} | {row['mean_target_prob']:.3f} | {row['min_target_prob']:.3f} "
                f"| {row['diversity_vs_real']:.3f} |"
            )
        print()
    write_json(results, args.json)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("benchmarks.quality", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the reference classifiers")
    train.add_argument("--data-dir", default="data", help="folder containing cifar-10-batches-py")
    train.add_argument(
        "--archs", nargs="+", default=["preact_resnet", "vgg_avg"], choices=sorted(ARCHITECTURES)
    )
    train.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="one seed per architecture")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--lr", type=float, default=0.4)
    train.add_argument("--device", default="cpu", help="where to train, e.g. cuda (default cpu)")
    train.add_argument("--out-dir", default=str(DEFAULT_REF_DIR))
    train.add_argument("--json", help="write test accuracies and training times here")
    for name, helptext in (
        ("score", "score a folder of PNG visualisations"),
        ("score-run", "score every epoch's PNGs of a FeatureVisCallback run"),
        ("score-real", "calibration"),
        ("frontier", "real images' diversity against their target probability"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument(
            "--refs",
            nargs="+",
            default=[],
            help="reference models: .pt files of `train`, or featvis fit .ckpt files",
        )
        cmd.add_argument("--data-dir", default="data", help="folder containing cifar-10-batches-py")
        cmd.add_argument("--k", type=int, default=10, help="nearest neighbours of the plausibility")
        cmd.add_argument("--json", help="write the numbers here")
        if name == "score":
            cmd.add_argument("--pngs", required=True, help="folder laid out <class name>/<i>.png")
            cmd.add_argument(
                "--ckpt", help="featvis checkpoint the images came from (adds robustness, diversity)"
            )
        elif name == "score-run":
            cmd.add_argument(
                "--run",
                required=True,
                nargs="+",
                help="the run's log_dir (or its featvis/ folder); several (the same epochs rendered with other "
                "seeds) add their mean per epoch and the last epoch against the best",
            )
        elif name == "score-real":
            cmd.add_argument("--per-class", type=int, default=4, help="real test images per class")
            cmd.add_argument("--seed", type=int, default=0)
        else:
            cmd.add_argument(
                "--per-class",
                type=int,
                nargs="+",
                default=[4, 10, 50, 100, 300, 600],
                help="how many of each class's surest images make each row",
            )
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the command-line interface.

    Args:
        argv: arguments; None reads ``sys.argv``.

    Returns:
        The numbers the command printed.
    """
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    commands = {
        "train": _cmd_train,
        "score": _cmd_score,
        "score-run": _cmd_score_run,
        "score-real": _cmd_score_real,
        "frontier": _cmd_frontier,
    }
    command = commands[args.command]
    result = command(args)
    print(f"({args.command} took {time.perf_counter() - start:.0f} s)")
    return result


if __name__ == "__main__":
    run_script(main)
