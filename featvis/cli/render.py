"""``featvis render``: a checkpoint to a folder of PNGs, every check made before any rendering.

Any LightningModule checkpoint renders: a ``ClassifierModule`` by default, another class with ``--model-class``
(loaded with its ``load_from_checkpoint``). When a ``FeatureVisCallback`` ran in the training, its checkpoint
state supplies the input convention, the learned colour basis, the image size, the class names and the render
settings, so the render matches the run's last epoch; flags override the settings. Training images (for settings
that take them, and the spectral gap) come from ``--data-dir``, else from the run's saved ``data.data_dir``.

The settings are :class:`~featvis.engine.RenderConfig`'s, one flag each; targets come from
:mod:`featvis.targets`, scores from :func:`featvis.quality.score_render`, and the folder is written by
:func:`featvis.folders.write_folder`, so ``--overwrite`` only ever replaces a folder featvis wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from featvis.allocator import keep_freed_memory_unless_disabled
from featvis.basis import LearnedBasis
from featvis.checkpoints import CheckpointError, load_module
from featvis.colour import ColourTransform, InputConvention, InputSpace
from featvis.engine import RenderConfig, RenderResult, class_names_of
from featvis.folders import FolderError, check_destination, write_folder
from featvis.quality import RGBInput, reference_spectrum, score_render
from featvis.scoring import training_sample
from featvis.targets import Target, image_size_of, resolve_targets


class RenderError(Exception):
    """A user error of ``featvis render``: printed as one line, exit status 2."""


def _render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featvis render",
        description="Render feature visualisations of a trained LightningModule checkpoint into a folder of PNGs.",
    )
    parser.add_argument(
        "--ckpt", required=True, help="Lightning checkpoint (.ckpt), e.g. written by featvis fit."
    )
    parser.add_argument(
        "--model-class",
        help="the checkpoint's LightningModule class as an import path (my_pkg.models.MyModule); "
        "default: featvis's ClassifierModule.",
    )
    parser.add_argument(
        "--out", required=True, help="output folder: <out>/<target>/<i>.png and <out>/grid.png."
    )
    parser.add_argument(
        "--classes", nargs="+", help="class names or indices to render (default: every class)."
    )
    parser.add_argument(
        "--layer", help="visualise channels of this layer (a name from model.named_modules())."
    )
    parser.add_argument("--channel", type=int, nargs="+", help="channel indices of --layer to visualise.")
    parser.add_argument(
        "--metrics", action="store_true", help="compute quality metrics into <out>/metrics.json."
    )
    parser.add_argument(
        "--data-dir",
        help="CIFAR data_dir: the training-set spectrum for the spectral gap, and the training images whose "
        "amplitude spectra --parameterisation phase keeps (--fourier-scale data averages them; --init-layout starts from "
        "their coarse layouts); default: the run's data.data_dir saved in the checkpoint, where it still holds "
        "cifar-10-batches-py.",
    )
    parser.add_argument(
        "--reference", nargs="+", help="ClassifierModule checkpoints of other models, for transfer accuracy."
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists and is not empty."
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages.")
    settings = parser.add_argument_group(
        "render settings (featvis.RenderConfig; unset flags keep its defaults)"
    )
    _add_config_flags(settings)
    return parser


def _print_progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 8) == 0:
        print(f"featvis render: step {done}/{total}", file=sys.stderr, flush=True)


def _load_checkpoint(path: str, device, model_class: type[pl.LightningModule] | None = None) -> nn.Module:
    try:
        return load_module(path, model_class, map_location=device)
    except CheckpointError as err:
        raise RenderError(str(err)) from err


def _import_class(path: str) -> type[pl.LightningModule]:
    """The LightningModule class named by ``--model-class`` (``pkg.module.Class`` or ``pkg.module:Class``)."""
    import importlib

    module_name, _, name = path.replace(":", ".").rpartition(".")
    fix = (
        "pass an import path such as my_pkg.models.MyModule, importable from the current folder or installed"
    )
    if not module_name:
        raise RenderError(f"--model-class {path} names no module; {fix}.")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise RenderError(f"--model-class {path} cannot be imported ({err}); {fix}.") from err
    if not (isinstance(found, type) and issubclass(found, pl.LightningModule)):
        raise RenderError(f"--model-class {path} is not a LightningModule class; {fix}.")
    return found


def _run_record(path: str) -> tuple[dict[str, Any], str | None]:
    """The FeatureVisCallback state in a checkpoint (the first one, by prefix order; empty without one) and the
    ``data_dir`` its datamodule was built with (None without one)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # loading the model itself already succeeded; only the callback state is optional
        return {}, None
    if not isinstance(checkpoint, dict):
        return {}, None
    states = checkpoint.get("callbacks") or {}
    found = [value for key, value in sorted(states.items()) if str(key).startswith("FeatureVisCallback")]
    data_dir = (checkpoint.get("datamodule_hyper_parameters") or {}).get("data_dir")
    state = next((state for state in found if isinstance(state, dict)), {})
    return state, str(data_dir) if isinstance(data_dir, str | Path) else None


def _run_colours(module: nn.Module, state: dict[str, Any]) -> tuple[InputSpace, ColourTransform | None]:
    """The module's input space and the colour basis the run rendered in (from the callback state)."""
    colour: InputSpace | None = ColourTransform.find(module)
    convention = (state.get("render") or {}).get("convention")
    if colour is None and convention is not None:
        try:
            colour = InputConvention.from_state(convention).space()
        except ValueError as err:
            raise RenderError(f"the checkpoint's input convention cannot be restored: {err}") from err
    return colour or ColourTransform.identity(), LearnedBasis.restore(state)


def _add_config_flags(parser: argparse._ActionsContainer) -> None:
    """One flag per plain RenderConfig setting (``--steps``, ``--lr``, ``--autocast``, ...), help from its docstring.

    The flags default to None, meaning "RenderConfig's default", so the defaults are declared only there.
    """
    hints = typing.get_type_hints(RenderConfig)
    for field in dataclasses.fields(RenderConfig):
        kind = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        names = [flag, "--images-per-class"] if field.name == "images_per_target" else [flag]
        options: dict[str, Any] = {"dest": field.name, "default": None, "help": _CONFIG_HELP.get(field.name)}
        args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        scalar = next((a for a in args if a in (int, float, str)), None)
        if bool in args:  # e.g. augment: the flag sets True/False; lists of transforms are for Python callers
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **options)
        elif scalar is not None:
            parser.add_argument(*names, type=scalar, **options)
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(*names, choices=typing.get_args(kind), **options)


def _config_help() -> dict[str, str]:
    """Each RenderConfig setting's description, from the ``Args:`` section of its docstring."""
    text = (RenderConfig.__doc__ or "").split("Args:", 1)[-1].split("Raises:", 1)[0]
    found: dict[str, str] = {}
    for name, body in re.findall(r"^\s{8}(\w+): (.*?)(?=^\s{8}\w+: |\Z)", text, flags=re.S | re.M):
        found[name] = " ".join(body.split()).replace("%", "%%")
    return found


_CONFIG_HELP = _config_help()
_CONFIG_FIELDS = [field.name for field in dataclasses.fields(RenderConfig)]


def render_main(argv: Sequence[str] | None = None) -> int:
    """Run ``featvis render``; returns the exit status (2 for user errors).

    Every check (arguments, checkpoint, layer, channels, output folder, data folder) runs before rendering.

    Args:
        argv: the arguments after ``render``; None reads ``sys.argv[2:]``.
    """
    import torch

    from featvis import engine
    from featvis.images import grid, save_png, write_image_folder

    args = _render_parser().parse_args(sys.argv[2:] if argv is None else list(argv))
    keep_freed_memory_unless_disabled()  # a render's steps reuse their freed memory (featvis.allocator)
    out = Path(args.out)
    # The inputs live on even when --out is a folder featvis wrote: never replace a folder that holds them.
    protect = [Path(args.ckpt), *(Path(path) for path in args.reference or [])]
    try:
        check_destination(out, args.overwrite, protect=protect)
        if args.channel is not None and args.layer is None:
            raise RenderError("--channel needs --layer (the layer whose channels to visualise).")
        overrides = {
            name: value for name in _CONFIG_FIELDS if (value := getattr(args, name, None)) is not None
        }
        model_class = _import_class(args.model_class) if args.model_class else None
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module = _load_checkpoint(args.ckpt, device, model_class)
        state, run_data_dir = _run_record(args.ckpt)
        run = state.get("render") or {}
        # The run's own settings (as its callback rendered them) under the flags, so the render matches its last
        # epoch unless a flag says otherwise.
        saved = {name: value for name, value in (run.get("settings") or {}).items() if name in _CONFIG_FIELDS}
        config = RenderConfig().replace(**saved).replace(**overrides)
        if config.image_size is None:
            config = config.replace(image_size=run.get("image_size") or image_size_of(module) or 32)
        colour, basis = _run_colours(module, state)
        class_names = class_names_of(module) or run.get("class_names")
        targets = resolve_targets(
            module,
            config.size,
            classes=args.classes,
            class_names=class_names,
            layer=args.layer,
            channels=args.channel if args.channel is not None or args.layer is None else [0],
        )
        data_dir = _data_dir(args.data_dir, run_data_dir, config.needs_spectra or args.metrics, args.quiet)
        spectrum = _train_spectrum(data_dir, config.size) if args.metrics and data_dir else None
        spectra = _phase_images(data_dir, run_data_dir) if config.needs_spectra else None
        references = {Path(p).stem: _load_checkpoint(p, device) for p in args.reference or []}
        if not args.quiet:
            count = f"{len(targets)} targets x {config.images_per_target} images"
            print(f"featvis render: {count} ...", file=sys.stderr)
        result = engine.render(
            module,
            [t.objective for t in targets],
            config=config,
            colour=colour,
            basis=basis,
            class_names=class_names,
            progress=None if args.quiet else _print_progress,
            spectra=spectra,
        )
        metrics = (
            _render_metrics(result, targets, RGBInput(module, colour), spectrum, references)
            if args.metrics
            else None
        )
    except (RenderError, ValueError) as err:  # FolderError and the engine's errors are ValueErrors
        # One line, whatever a wrapped library message looked like.
        print(f"featvis render: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    tags = [t.tag for t in targets]

    def write(folder: Path) -> None:
        write_image_folder(result.rgb, tags, folder)
        save_png(grid(result.rgb, scale=1, padding=1), folder / "grid.png")
        if metrics is not None:
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    # A hidden sibling folder renamed into place: an interrupted run leaves no folder that looks complete, and
    # --overwrite replaces only a folder featvis wrote (checked again, as the folder may have changed meanwhile).
    try:
        write_folder(out, write, args.overwrite, protect=protect)
    except FolderError as err:
        print(f"featvis render: error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"featvis render: wrote {out} in {result.seconds:.1f} s", file=sys.stderr)
        if metrics is not None:
            print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _train_images(data_dir: str) -> Tensor:
    """The uint8 CIFAR training images under ``data_dir``."""
    from featvis.cifar import CIFAR10_FOLDER, read_split

    folder = Path(data_dir) / CIFAR10_FOLDER
    if not folder.is_dir():
        raise RenderError(f"--data-dir {data_dir} holds no {CIFAR10_FOLDER} folder.")
    return read_split(folder, train=True)[0]


def _train_spectrum(data_dir: str, size: tuple[int, int]) -> Tensor:
    """The radial log spectrum of the CIFAR training set under ``data_dir``, for the spectral gap."""
    return reference_spectrum(_train_images(data_dir), min(size))


def _data_dir(given: str | None, run: str | None, used: bool, quiet: bool) -> str | None:
    """``--data-dir``, else the run's own ``data.data_dir`` (saved in the checkpoint) when it still holds the CIFAR
    folder, so a run rendered with training images (``phase``, ``init_layout``) renders again without the flag."""
    from featvis.cifar import CIFAR10_FOLDER

    if given is not None or run is None or not (Path(run) / CIFAR10_FOLDER).is_dir():
        return given
    if used and not quiet:
        print(f"featvis render: training images from {run} (the run's data.data_dir)", file=sys.stderr)
    return run


def _phase_images(data_dir: str | None, run_data_dir: str | None = None) -> Tensor:
    """Evenly spaced training images (RGB in [0, 1]) whose amplitude spectra a phase-only or data-scaled render
    takes, or whose layouts a layout start does."""
    if data_dir is None:
        missing = f" (the run's data.data_dir {run_data_dir} holds none)" if run_data_dir else ""
        raise RenderError(
            "--parameterisation phase, --fourier-scale data and --init-layout take training images: pass "
            f"--data-dir (the folder that holds cifar-10-batches-py){missing}, or keep the defaults."
        )
    return training_sample(_train_images(data_dir)).float().div(255)


def _render_metrics(
    result: RenderResult,
    targets: list[Target],
    model: RGBInput,
    spectrum: Tensor | None,
    references: dict[str, nn.Module],
) -> dict[str, float]:
    """Quality metrics of a render (:func:`featvis.quality.score_render`) for ``metrics.json``.

    Args:
        result: the render.
        targets: what was rendered.
        model: the rendered model, seen from RGB.
        spectrum: the training images' spectrum, or None.
        references: ClassifierModule checkpoints by name.
    """
    report = score_render(
        result.rgb,
        [t.class_index for t in targets],
        model=model,
        spectrum=spectrum,
        references={
            name: RGBInput(ref, ColourTransform.find(ref) or ColourTransform.identity())
            for name, ref in references.items()
        },
    )
    scores = {key: value for key, value in report.scores.items() if "/" not in key}
    return {"mean_objective": float(result.values.float().mean()), **scores}
