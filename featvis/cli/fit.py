"""``featvis fit|validate|test|predict``: LightningCLI with featvis's model, data and callback, and one-line errors.

FeatvisCLI adds the ``featvis:`` section (the FeatureVisCallback, ``--featvis.<arg>``), continues a resumed run in
its own log folder, drops LearningRateMonitor when there is no logger, and turns bad input into one line naming
the value and the fix, with exit status 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer import Trainer
from lightning.pytorch.utilities import rank_zero_info

from featvis.allocator import keep_freed_memory_unless_disabled
from featvis.callback import FeatureVisCallback
from featvis.data import CIFARDataModule
from featvis.engine import RenderConfig, resolve_autocast
from featvis.model import ClassifierModule

_DESCRIPTION = (
    "Train an image classifier while featvis's FeatureVisCallback renders what it learns (fit, validate, test, "
    "predict: the LightningCLI subcommands below; `featvis fit --help` lists every argument), or render a trained "
    "checkpoint into PNG files with `featvis render --ckpt FILE --out DIR` (`featvis render --help` lists its "
    "options)."
)
_USAGE = (
    "featvis [-h] [-c CONFIG] {fit,validate,test,predict} ...\n"
    "       featvis render --ckpt CKPT --out OUT [options]"
)


class FeatvisCLI(LightningCLI):
    """LightningCLI with featvis's model and datamodule as defaults, their arguments linked, and the
    :class:`FeatureVisCallback` configured under ``featvis:`` (``--featvis.<arg>``).

    Beyond LightningCLI:

    - bad input (a value the data, model, callback or render settings refuse, a missing or corrupt data folder,
      a failed download, an unknown class or layer) prints one line ``featvis <subcommand>: error: ...`` on
      stderr and raises ``SystemExit(2)``, before any training step; other exceptions propagate unchanged;
    - ``fit --ckpt_path <save_dir>/<name>/<version>/checkpoints/<file>.ckpt`` continues in that run folder
      (same logger version, TensorBoard run and PNG tree) unless ``--resume_new_version true``;
    - without a logger (``--trainer.logger false``) a ``LearningRateMonitor``, which needs one, is dropped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except (ValueError, OSError) as err:
            message = _bad_input(err)
            if message is None:
                raise
            subcommand = getattr(self, "subcommand", None)
            print(f"featvis{f' {subcommand}' if subcommand else ''}: error: {message}", file=sys.stderr)
            raise SystemExit(2) from err

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(FeatureVisCallback, "featvis")
        parser.add_argument(
            "--resume_new_version",
            type=bool,
            default=False,
            help=(
                "fit only: with a --ckpt_path inside a logger's run folder (<save_dir>/<name>/<version>/"
                "checkpoints/), log into a new version instead of continuing in that folder."
            ),
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _check_listed_callbacks(config)
        _cpu_precision(config)
        if self.subcommand == "fit":
            _continue_run_folder(config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set in Trainer.__init__
        monitors = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
        if monitors and not trainer.loggers:
            # LearningRateMonitor refuses to run without a logger; without one featvis writes PNG files only.
            trainer.callbacks = [c for c in callbacks if c not in monitors]  # type: ignore[attr-defined]
            rank_zero_info("featvis: no logger, so the LearningRateMonitor (it needs one) is dropped.")
        return trainer


def main(args: Sequence[str] | None = None) -> FeatvisCLI | None:
    """Run ``featvis fit|validate|test|predict [--config FILE] ...``.

    Args:
        args: command-line arguments; None reads ``sys.argv``.

    Returns:
        The finished FeatvisCLI (its ``trainer``, ``model`` and ``datamodule``).

    Raises:
        SystemExit: code 0 after ``--help`` or ``--print_config``; code 2 for bad input, after printing one line
            ``featvis <subcommand>: error: <what is wrong and the fix>`` to stderr (jsonargparse's own parse
            errors also exit with 2).
    """
    keep_freed_memory_unless_disabled()  # about 1.2x the CPU training steps per second (featvis.allocator)
    return FeatvisCLI(
        ClassifierModule,
        CIFARDataModule,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "featvis", "description": _DESCRIPTION, "usage": _USAGE},
    )


class FitConfigError(ValueError):
    """A bad combination of ``featvis fit|validate|...`` arguments found by FeatvisCLI itself (one line, exit 2)."""


# The classes featvis fit builds from its config, innermost first, and the key each is configured under.
_CONFIGURED: tuple[tuple[type, str], ...] = (
    (RenderConfig, "featvis.config"),
    (FeatureVisCallback, "featvis"),
    (CIFARDataModule, "data"),
    (ClassifierModule, "model"),
)
# Methods that check the user's data folder, download, classes and layers at the start of a run.
_START_CHECKS: tuple[tuple[type, frozenset[str]], ...] = (
    (CIFARDataModule, frozenset({"prepare_data", "setup"})),
    (FeatureVisCallback, frozenset({"setup"})),
)


def _bad_input(err: BaseException) -> str | None:
    """The one-line message of an error caused by the user's input, or None for anything else.

    Bad input is a ValueError/OSError raised by the constructor of a configured class (jsonargparse wraps it,
    so the chain of causes is searched, innermost first), prefixed with the key the class is configured under
    (``batch_size must be ...`` becomes ``data.batch_size must be ...``), or one raised by the data and target
    checks at the start of a run (:data:`_START_CHECKS`), or a :class:`FitConfigError`. Anything else is a
    bug and keeps its traceback.
    """
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    # Each exception's traceback runs only up to where the next one caught it: the outer frames are the outer
    # exceptions' (e.g. jsonargparse building a trainer.callbacks entry around a RenderConfig that failed).
    all_frames = [frame for exc in chain for frame, _ in traceback.walk_tb(exc.__traceback__)]
    for exc in reversed(chain):
        if isinstance(exc, FitConfigError):
            return " ".join(str(exc).split())
        if not isinstance(exc, (ValueError, OSError)):
            continue
        for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
            owner, step = frame.f_locals.get("self"), frame.f_code.co_name
            if step in ("__init__", "__post_init__"):
                key = next((key for cls, key in _CONFIGURED if isinstance(owner, cls)), None)
                if key is not None:
                    return _name_argument(_listed_key(key, all_frames), owner, str(exc))
            elif any(isinstance(owner, cls) and step in steps for cls, steps in _START_CHECKS):
                return " ".join(str(exc).split())
    return None


def _listed_key(key: str, frames: list[FrameType]) -> str:
    """``key`` of the FeatureVisCallback, or ``trainer.callbacks[FeatureVisCallback]`` for one listed there."""
    if key.startswith("featvis"):
        # jsonargparse builds a class_path entry (a trainer.callbacks item) in adapt_class_type(val_class=...).
        listed = any(
            isinstance(cls := frame.f_locals.get("val_class"), type) and issubclass(cls, FeatureVisCallback)
            for frame in frames
        )
        if listed:
            return "trainer.callbacks[FeatureVisCallback]" + key.removeprefix("featvis")
    return key


def _name_argument(key: str, owner: object, message: str) -> str:
    """``message`` on one line, its leading argument name qualified by ``key`` (else ``key:`` in front)."""
    text = " ".join(message.split())
    if dataclasses.is_dataclass(owner):
        names = {field.name for field in dataclasses.fields(owner)}
    else:
        names = set(inspect.signature(type(owner).__init__).parameters) - {"self"}
    first = re.match(r"\w+", text)
    return f"{key}.{text}" if first and first.group() in names else f"{key}: {text}"


def _check_listed_callbacks(config: Namespace) -> None:
    """Refuse a FeatureVisCallback in ``trainer.callbacks`` with the prefix of the one under ``featvis:``.

    Configs written before the ``featvis:`` section list the callback there; two with one prefix would write the
    same tags and PNG folder (and Lightning refuses their equal state keys with a long RuntimeError).
    """
    entries = config["trainer"].get("callbacks") or []
    prefix = (config.get("featvis") or Namespace()).get("prefix", "featvis")
    for entry in entries if isinstance(entries, list) else [entries]:
        cls = _class_of(entry)  # not None: entry is a Namespace with a class_path
        if cls is None or not issubclass(cls, FeatureVisCallback):
            continue
        if ((entry.get("init_args") or Namespace()).get("prefix") or "featvis") == prefix:
            raise FitConfigError(
                f"trainer.callbacks lists a FeatureVisCallback with prefix {prefix!r}, which featvis already "
                "adds from its featvis: section; move that entry's init_args to featvis: in the config "
                "(--featvis.<arg> on the command line), or give it another prefix."
            )


_RUN_FILES = ("events.out.tfevents.*", "metrics.csv", "hparams.yaml", "config.yaml")


def _run_folder(ckpt_path: object) -> Path | None:
    """The logger's run folder ``<save_dir>/<name>/<version>`` of a checkpoint in its ``checkpoints/``, else None.

    The checkpoint must be a file in a folder named ``checkpoints`` (ModelCheckpoint's default place), and that
    folder's parent must hold something a TensorBoardLogger/CSVLogger or LightningCLI writes there (an event
    file, ``metrics.csv``, ``hparams.yaml`` or ``config.yaml``).
    """
    if not isinstance(ckpt_path, str | Path) or not Path(ckpt_path).is_file():
        return None  # also Lightning's "last", "best", ... which name no file
    checkpoints = Path(ckpt_path).absolute().parent
    run = checkpoints.parent
    if checkpoints.name != "checkpoints" or not any(any(run.glob(pattern)) for pattern in _RUN_FILES):
        return None
    return run


def _class_of(entry: object) -> type | None:
    """The class of a ``class_path`` entry of the config, or None."""
    if not isinstance(entry, Namespace) or not isinstance(entry.get("class_path"), str):
        return None
    module, _, name = entry["class_path"].rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _cpu_precision(config: Namespace) -> None:
    """Train in float32 instead of bf16 on a CPU without native bf16 (e.g. AVX2 only), where bf16 is emulated.

    ``configs/cifar10.yaml`` asks for ``bf16-mixed``, the fast path on CUDA and on CPUs with AVX-512 bf16 or AMX;
    on other CPUs the same setting makes every convolution an emulated one, many times slower than float32.
    """
    trainer = config.get("trainer")
    if trainer is None or str(trainer.get("precision")) not in ("bf16-mixed", "bf16", "bf16-true"):
        return
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
        return
    if resolve_autocast("auto", torch.device("cpu"), torch.float32) is None:
        trainer["precision"] = "32-true"
        rank_zero_info(
            "featvis: this CPU has no native bf16 (it would be emulated, many times slower), so training runs in "
            "float32 (trainer.precision 32-true)."
        )


def _checkpoint_step(path: Path) -> int | None:
    """The global step a Lightning checkpoint was saved at; None if it cannot be read (fit reports that later)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable checkpoint fails in trainer.fit with its own message
        return None
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return step if isinstance(step, int) else None


def _continue_run_folder(config: Namespace) -> None:
    """Point the first logger at the run folder of ``--ckpt_path``, so a resumed fit continues that run.

    With ``ckpt_path`` in ``<save_dir>/<name>/<version>/checkpoints/`` (see :func:`_run_folder`) and
    ``resume_new_version`` false, the first logger (the one that decides ``trainer.log_dir``, hence the
    checkpoint folder and the PNG tree) gets ``version: <version>``, and ``save_dir``/``name`` of that folder
    where its own point elsewhere. That logger must be a TensorBoardLogger or CSVLogger (or Lightning's default
    logger, replaced by the one that wrote the folder) without a ``version`` of its own; otherwise, and without
    a logger, nothing changes.
    """
    if config.get("resume_new_version"):
        return
    run = _run_folder(config.get("ckpt_path"))
    if run is None:
        return
    loggers = config["trainer"].get("logger")
    first = loggers[0] if isinstance(loggers, list) and loggers else loggers
    if first is None or first is True:  # Lightning's default logger: <default_root_dir>/lightning_logs
        kind = TensorBoardLogger if any(run.glob("events.out.tfevents.*")) else CSVLogger
        first = Namespace(class_path=f"{kind.__module__}.{kind.__name__}", init_args=Namespace())
        if isinstance(loggers, list):
            loggers[0] = first
        else:
            config["trainer"]["logger"] = first
    cls = _class_of(first)
    if cls is None or not issubclass(cls, (TensorBoardLogger, CSVLogger)):
        return
    assert isinstance(first, Namespace)
    init_args = first.get("init_args") or Namespace()
    if init_args.get("version") is not None:  # a version given explicitly wins
        return
    first["init_args"] = init_args
    save_dir, name = init_args.get("save_dir"), init_args.get("name", "lightning_logs")
    if save_dir is None or (Path(save_dir) / (name or "")).resolve() != run.parent.resolve():
        init_args["save_dir"], init_args["name"] = str(run.parent.parent), run.parent.name
    init_args["version"] = run.name
    if issubclass(cls, TensorBoardLogger):
        # A killed run may have logged past its last checkpoint; TensorBoard drops the events at or after
        # purge_step when it reads the folder, so the resumed run's re-logged steps appear once.
        step = _checkpoint_step(Path(str(config["ckpt_path"])))
        if step is not None:
            first["dict_kwargs"] = {**(first.get("dict_kwargs") or {}), "purge_step": step + 1}
    rank_zero_info(
        f"featvis: resuming in {run}, the run folder of --ckpt_path (--resume_new_version true starts a new "
        "version instead)."
    )
