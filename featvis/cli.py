"""The ``featvis`` command line: LightningCLI for fit/validate/test/predict, and ``featvis render``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from featvis.data import CIFARDataModule
from featvis.model import ClassifierModule


class FeatvisCLI(LightningCLI):
    """LightningCLI with featvis's model and datamodule as defaults and their arguments linked."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: Sequence[str] | None = None) -> FeatvisCLI | None:
    """Run ``featvis fit|validate|test|predict [--config FILE] ...``.

    Args:
        args: command-line arguments; None reads ``sys.argv``.
    """
    return FeatvisCLI(
        ClassifierModule,
        CIFARDataModule,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "featvis"},
    )


def console_main() -> None:
    """Entry point of the ``featvis`` console script: ``featvis render ...`` or a LightningCLI subcommand."""
    if sys.argv[1:2] == ["render"]:
        sys.exit(render_main(sys.argv[2:]))
    if sys.argv[1:] in (["-h"], ["--help"]):
        # LightningCLI's parser knows only its own subcommands; name ours first.
        print(
            "featvis render --help    render a ClassifierModule checkpoint into PNGs (see below for training)\n"
        )
    main()


class RenderError(Exception):
    """A user error of ``featvis render``: printed as one line, exit status 2."""


def _render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featvis render",
        description="Render feature visualisations of a trained ClassifierModule checkpoint into a folder of PNGs.",
    )
    parser.add_argument(
        "--ckpt", required=True, help="ClassifierModule checkpoint (.ckpt) written by featvis fit."
    )
    parser.add_argument(
        "--out", required=True, help="output folder: <out>/<target>/<i>.png and <out>/grid.png."
    )
    parser.add_argument(
        "--classes", nargs="+", help="class names or indices to render (default: every class)."
    )
    parser.add_argument("--images-per-class", type=int, default=4, help="images per target (default 4).")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the engine's).")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed gives byte-identical files.")
    parser.add_argument(
        "--layer", help="visualise channels of this layer (a name from model.named_modules())."
    )
    parser.add_argument("--channel", type=int, nargs="+", help="channel indices of --layer to visualise.")
    parser.add_argument(
        "--metrics", action="store_true", help="compute quality metrics into <out>/metrics.json."
    )
    parser.add_argument("--data-dir", help="CIFAR data_dir: the training-set spectrum for the spectral gap.")
    parser.add_argument(
        "--reference", nargs="+", help="ClassifierModule checkpoints of other models, for transfer accuracy."
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists and is not empty."
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages.")
    return parser


def _print_progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 8) == 0:
        print(f"featvis render: step {done}/{total}", file=sys.stderr, flush=True)


def _resolve_targets(classes: Sequence[str] | None, class_names: list[str]) -> list[int] | None:
    if not classes:
        return None
    indices = []
    for item in classes:
        if item in class_names:
            indices.append(class_names.index(item))
        elif item.lstrip("-").isdigit():
            index = int(item)
            if not 0 <= index < len(class_names):
                raise RenderError(
                    f"class index {index} is out of range; valid indices are 0..{len(class_names) - 1}."
                )
            indices.append(index)
        else:
            raise RenderError(
                f"unknown class {item!r}; valid names are {', '.join(class_names)} (or indices)."
            )
    return indices


def _load_checkpoint(path: str, device):
    from featvis.model import load_classifier

    if not Path(path).is_file():
        raise RenderError(f"checkpoint {path} does not exist; pass the .ckpt written by featvis fit.")
    try:
        return load_classifier(path, map_location=device)
    except Exception as err:  # a truncated file or a foreign checkpoint
        raise RenderError(
            f"cannot load checkpoint {path} as a ClassifierModule: {type(err).__name__}: {err}"
        ) from err


def render_main(argv: Sequence[str] | None = None) -> int:
    """Run ``featvis render``; returns the exit status (2 for user errors).

    Args:
        argv: the arguments after ``render``; None reads ``sys.argv[2:]``.
    """
    import torch

    from featvis.engine import Channel, render
    from featvis.images import fsync_tree, grid, save_png, write_image_folder

    parser = _render_parser()
    args = parser.parse_args(sys.argv[2:] if argv is None else list(argv))
    out = Path(args.out)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            raise RenderError(
                f"--out {out} exists and is not empty; choose a new folder or pass --overwrite."
            )
        if args.channel is not None and args.layer is None:
            raise RenderError("--channel needs --layer (the layer whose channels to visualise).")
        if args.images_per_class < 1:
            raise RenderError(f"--images-per-class must be >= 1, got {args.images_per_class}.")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module = _load_checkpoint(args.ckpt, device)
        class_names = list(module.class_names)
        if args.layer is not None:
            channels = args.channel if args.channel is not None else [0]
            targets = [Channel(args.layer, c) for c in channels]
            names = [f"{args.layer}-{c}" for c in channels]
        else:
            indices = _resolve_targets(args.classes, class_names)
            targets = indices
            names = [class_names[i] for i in (indices if indices is not None else range(len(class_names)))]
        options = {"images_per_target": args.images_per_class, "seed": args.seed}
        if args.steps is not None:
            options["steps"] = args.steps
        if not args.quiet:
            print(
                f"featvis render: {len(names)} targets x {args.images_per_class} images ...", file=sys.stderr
            )
        if not args.quiet:
            options["progress"] = _print_progress
        try:
            result = render(module, targets, colour=module.colour, class_names=class_names, **options)
        except ValueError as err:
            raise RenderError(str(err)) from err
        metrics = _render_metrics(args, module, result, device) if args.metrics else None
    except RenderError as err:
        print(f"featvis render: error: {err}", file=sys.stderr)
        return 2

    # Write everything into a hidden sibling folder, then rename: an interrupted run leaves no folder that
    # looks complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write_image_folder(result.rgb, names, staging)
        save_png(grid(result.rgb, scale=1, padding=1), staging / "grid.png")
        if metrics is not None:
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        fsync_tree(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not args.quiet:
        print(f"featvis render: wrote {out} in {result.seconds:.1f} s", file=sys.stderr)
        if metrics is not None:
            print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


class _RGBClassifier:
    """Wraps a ClassifierModule so it takes RGB in [0, 1], as reference models for transfer accuracy do."""

    @staticmethod
    def wrap(module):
        import torch

        class RGBClassifier(torch.nn.Module):
            def __init__(self, inner) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, rgb):
                return self.inner(self.inner.colour.to_model(rgb))

        return RGBClassifier(module)


def _render_metrics(args, module, result, device) -> dict:
    """Quality metrics of a class render: robustness, diversity, and with the data or references given,
    spectral gap against the training set and transfer accuracy."""
    import torch

    from featvis.engine import metrics as metrics_lib

    rgb = result.rgb.flatten(0, 1).float()
    count, per_target = result.rgb.shape[:2]
    groups = torch.arange(count).repeat_interleave(per_target)
    out: dict = {"mean_objective": float(result.values.float().mean())}
    features = metrics_lib.penultimate_features(module, rgb.to(device), module.colour.to_model)
    out["diversity"] = metrics_lib.feature_diversity(features, groups)
    if args.layer is not None:
        return out
    names = list(module.class_names)
    targets = torch.tensor([names.index(n) for n in _target_names(args, names)]).repeat_interleave(per_target)
    out["robustness"] = metrics_lib.robustness(module, rgb.to(device), targets, module.colour.to_model)
    if args.data_dir:
        from featvis.data import CIFAR10_FOLDER, read_split

        folder = Path(args.data_dir) / CIFAR10_FOLDER
        if not folder.is_dir():
            raise RenderError(f"--data-dir {args.data_dir} holds no {CIFAR10_FOLDER} folder.")
        train_images, _ = read_split(folder, train=True)
        out["spectral_gap"] = metrics_lib.spectral_gap(rgb.cpu(), train_images.float() / 255)
    if args.reference:
        references = [_RGBClassifier.wrap(_load_checkpoint(path, device)) for path in args.reference]
        out["transfer_accuracy"] = float(metrics_lib.transfer_accuracy(references, rgb.to(device), targets))
    return out


def _target_names(args, class_names: list[str]) -> list[str]:
    indices = _resolve_targets(args.classes, class_names)
    return [class_names[i] for i in (indices if indices is not None else range(len(class_names)))]
