"""Loading a LightningModule checkpoint, with one line saying what is wrong when it cannot be loaded.

``featvis render --ckpt/--reference`` and the callback's ``reference_model`` path load through
:func:`load_module`, so a folder, a missing file, a foreign file or a checkpoint of another class gets the same
one-line :class:`CheckpointError` (a ``ValueError``: ``featvis fit`` prints it and exits with status 2).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

_LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")
_FIX = "pass the .ckpt written by featvis fit."


class CheckpointError(ValueError):
    """A checkpoint path that cannot be loaded; the message is one line that names the file and the fix."""


def load_module(
    path: str | Path,
    model_class: type[pl.LightningModule] | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """The checkpoint's module in eval mode: a ``ClassifierModule``, or ``model_class`` via its ``load_from_checkpoint``.

    Args:
        path: the ``.ckpt`` file.
        model_class: the LightningModule class to load; None loads a featvis ``ClassifierModule`` (with its colour
            transform and class names).
        map_location: device to load the weights onto.

    Raises:
        CheckpointError: the path is a folder, is missing, is not a regular file, or does not load as the class.
    """
    file = Path(path)
    if file.is_dir():
        found = sorted(p.name for p in file.glob("*.ckpt"))[:3]
        hint = f" such as {file / found[0]}" if found else ""
        raise CheckpointError(
            f"checkpoint {path} is a folder, not a file; pass the .ckpt file written by featvis fit{hint}."
        )
    if not file.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {_FIX}")
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file; {_FIX}")
    try:
        if model_class is None:
            from featvis.model import load_classifier  # the model stack only when a checkpoint is loaded

            return load_classifier(str(file), map_location=map_location)
        return model_class.load_from_checkpoint(file, map_location=map_location).eval()
    except Exception as err:  # a truncated file, a foreign file or a foreign checkpoint
        name = model_class.__name__ if model_class is not None else "ClassifierModule"
        raise CheckpointError(_explain_load_failure(file, err, name)) from err


def _first_line(text: str, limit: int = 160) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _explain_load_failure(path: Path, err: Exception, class_name: str) -> str:
    """One line saying why ``path`` is not a loadable ``class_name`` checkpoint.

    Torch's own messages for foreign files suggest ``weights_only=False`` (unsafe for an unknown file) and
    filing an issue, and Lightning's for a foreign dict is a bare KeyError; say what the file is instead.
    Only runs after a failed load, so a good checkpoint is read once.

    Args:
        path: the checkpoint file.
        err: what loading it as ``class_name`` raised.
        class_name: the LightningModule class it was loaded as.
    """
    try:
        # weights_only: the file is unknown, so nothing in it may run code while we look at it.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as load_err:
        if not zipfile.is_zipfile(path):
            reason = "the file is not a torch.save archive"
        else:
            text = str(load_err).split("WeightsUnpickler error:", 1)[-1]
            reason = f"{type(load_err).__name__}: {_first_line(text) or 'no details'}"
        return f"cannot load checkpoint {path}: it is not a Lightning checkpoint (torch.load failed: {reason}); {_FIX}"
    missing = [key for key in _LIGHTNING_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        what = ", ".join(repr(key) for key in missing)
        return f"cannot load checkpoint {path}: it is not a Lightning checkpoint (it lacks {what}); {_FIX}"
    return (
        f"cannot load checkpoint {path} as a {class_name}: {type(err).__name__}: "
        f"{_first_line(str(err), 300) or 'no details'}"
    )


__all__ = ["CheckpointError", "load_module"]
