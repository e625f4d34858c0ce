"""Where renders go: TensorBoard images, scalars for every logger, PNG files and the timeline.

One place decides how a render is shown, so the callback only says *what* to log and *when*. Every logger gets
the scalars (``log_metrics``); loggers that can show images get the pictures; PNG files go under
``<log_dir>/<prefix>/`` for everyone, which is all a run without an image-capable logger gets.

Each epoch's PNG folder is written as a whole (:func:`featvis.folders.write_folder`: built in a hidden staging
folder, with a manifest, then renamed into place), so a run killed while writing leaves no folder that looks
complete, and :meth:`RenderOutputs.prune` can tell the folders featvis wrote from anything else.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from featvis import images as img
from featvis.engine.checks import check_bool, check_int
from featvis.folders import FolderError, remove_owned, remove_stale_siblings, write_folder

# An epoch's PNG folder, or a staging / moved-aside folder that write_folder made for it.
_EPOCH_ENTRY = re.compile(r"\.?(epoch_(\d+))(\.(partial|old)-.+)?")


class WarnOnce:
    """Rank-zero warnings (or infos) that are shown once per key, however often their cause repeats."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, key: str, message: str, info: bool = False) -> None:
        """Show ``message`` unless a message with ``key`` was shown before.

        Args:
            key: what the message is about, e.g. ``"colour"``.
            message: the text.
            info: log it as information rather than as a warning.
        """
        if key not in self.seen:
            self.seen.add(key)
            (rank_zero_info if info else rank_zero_warn)(message)


class RenderOutputs:
    """Writes one callback's renders: per-target strips, a sheet of all targets, scalars, PNGs, the timeline.

    Tags are ``<prefix>/<tag>`` (one target's images side by side), ``<prefix>/all`` (targets x images) and
    ``<prefix>/timeline`` (targets x rendered epochs); PNG files are ``<log_dir>/<prefix>/epoch_<NNN>/<tag>/<i>.png``
    and ``<log_dir>/<prefix>/timeline.png``.

    Args:
        prefix: tag prefix and name of the PNG folder.
        save_png: write the PNG files.
        display_scale: nearest-neighbour upsampling of logged images; None picks ``128 // size`` (at least 1).
        warn: the caller's warn-once record.
    """

    def __init__(self, prefix: str, save_png: bool, display_scale: int | None, warn: WarnOnce) -> None:
        if not isinstance(prefix, str) or img.safe_name(prefix) != prefix:
            raise ValueError(f"prefix must be a plain name (letters, digits, '.', '_', '-'), got {prefix!r}.")
        self.prefix = prefix
        self.save_png = check_bool("save_png", save_png)
        self.display_scale = None if display_scale is None else check_int("display_scale", display_scale, 1)
        self.warn = warn

    def scale(self, size: int) -> int:
        """Upsampling factor for images of ``size`` pixels."""
        return self.display_scale if self.display_scale is not None else max(1, 128 // size)

    def log_render(
        self,
        loggers: Sequence[Logger],
        log_dir: Path,
        epoch: int,
        step: int,
        rgb: Tensor,
        tags: Sequence[str],
        scalars: dict[str, float],
    ) -> None:
        """Log one render.

        Args:
            loggers: the trainer's loggers.
            log_dir: the run's folder, for the PNG files.
            epoch: the epoch the render belongs to (training epochs done), which names its PNG folder and is
                logged as the scalar ``epoch`` beside ``scalars``, as Lightning does.
            step: the step the pictures and scalars are logged at (the trainer's global step).
            rgb: ``(T, K, 3, H, W)`` images in [0, 1].
            tags: one tag per target.
            scalars: values to log, keyed by their full tag.
        """
        if self.save_png:
            self._write_pngs(log_dir / self.prefix / f"epoch_{epoch:03d}", rgb, tags)
        scale = self.scale(rgb.shape[-1])
        for writer in self._writers(loggers):
            for target, tag in enumerate(tags):
                strip = img.grid(rgb[target : target + 1], scale=scale, padding=2)
                writer.add_image(f"{self.prefix}/{tag}", strip, global_step=step, dataformats="CHW")
            writer.add_image(
                f"{self.prefix}/all", img.grid(rgb, scale=scale, padding=2), step, dataformats="CHW"
            )
            writer.flush()
        for logger in loggers:
            logger.log_metrics({**scalars, "epoch": epoch}, step=step)

    def log_timeline(self, loggers: Sequence[Logger], log_dir: Path, step: int, timeline: Timeline) -> None:
        """Log the timeline: one row per target, one column per rendered epoch in ascending order, labelled.

        Target tags stand in a left margin, epoch numbers in a top margin. With ``save_png`` it also says where the
        PNG files went (an INFO line of Lightning's logger, shown on the console).

        Args:
            loggers: the trainer's loggers.
            log_dir: the run's folder, for ``timeline.png``.
            step: the step the picture is logged at (the trainer's global step at the end of fit).
            timeline: the rendered epochs and their pictures.
        """
        epochs, tags, tiles = timeline.columns()
        labels = [str(epoch) for epoch in epochs]
        picture = img.labelled_grid(
            tiles, tags, labels, self.scale(tiles.shape[-1]), padding=2, corner="epoch"
        )
        if self.save_png:
            path = log_dir / self.prefix / "timeline.png"
            img.save_png(picture, path)
            rank_zero_info(f"featvis: PNGs under {path.parent}/epoch_*/, timeline {path}")
        for writer in self._writers(loggers):
            writer.add_image(f"{self.prefix}/timeline", picture, global_step=step, dataformats="CHW")
            writer.flush()

    def prune(self, log_dir: Path, keep: Collection[int]) -> None:
        """Delete the epoch folders that featvis wrote for epochs not in ``keep``, and unfinished writes.

        Called when a run resumes from a checkpoint: a run killed after writing an epoch's PNGs but before saving
        its checkpoint (or one resumed from an earlier checkpoint) left renders that the checkpoint does not
        cover and the resumed run supersedes. Only what a folder's manifest lists is deleted; a folder without a
        manifest, or with entries featvis did not write, is kept (with a warning).

        Args:
            log_dir: the run's folder.
            keep: the epochs whose renders the checkpoint covers.
        """
        root = log_dir / self.prefix
        if not root.is_dir():
            return
        matches = [_EPOCH_ENTRY.fullmatch(entry.name) for entry in root.iterdir()]
        for name, epoch in sorted({(m.group(1), int(m.group(2))) for m in matches if m}):
            folder = root / name
            remove_stale_siblings(folder)  # staging folders of killed writes (never renamed into place)
            if epoch not in keep and folder.is_dir() and not folder.is_symlink():
                remove_owned(folder)

    def _write_pngs(self, folder: Path, rgb: Tensor, tags: Sequence[str]) -> None:
        """Write one render's PNG folder as a whole (replacing an earlier one of featvis's), or warn why not."""

        def write(staging: Path) -> None:
            img.write_image_folder(rgb, list(tags), staging)

        try:
            write_folder(folder, write, overwrite=True)
        except FolderError as err:  # e.g. a folder of that name that featvis did not write
            self.warn("png", f"FeatureVisCallback: PNGs not written: {err}")

    def _writers(self, loggers: Sequence[Logger]) -> list[Any]:
        writers = [logger.experiment for logger in loggers if isinstance(logger, TensorBoardLogger)]
        others = [type(logger).__name__ for logger in loggers if not isinstance(logger, TensorBoardLogger)]
        if others:
            self.warn(
                "loggers",
                f"FeatureVisCallback logs images to TensorBoard only; for {others} they are written as PNG files "
                f"under <log_dir>/{self.prefix}/ (scalars go to every logger).",
            )
        return writers


class Timeline:
    """The pictures a run's timeline is made of: per rendered epoch, the first image of each target.

    Its state goes into the callback's checkpoint state, so a resumed run continues the same timeline; a
    checkpoint rendered for other targets or another image size restarts it (with a warning).

    Args:
        warn: the caller's warn-once record.
    """

    def __init__(self, warn: WarnOnce) -> None:
        self.warn = warn
        self.epochs: list[int] = []
        self.thumbs: list[Tensor] = []  # per rendered epoch: (T, 3, H, W) uint8
        self.tags: list[str] = []  # one per target: the rows
        self._saved_tags: list[str] | None = None

    def add(self, epoch: int, rgb: Tensor, tags: Sequence[str]) -> None:
        """Record the render of ``epoch``: ``rgb`` is ``(T, K, 3, H, W)`` in [0, 1], one tag per target."""
        thumbs = (rgb[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)
        if self._saved_tags is not None:
            if self._saved_tags != list(tags) or (self.thumbs and self.thumbs[0].shape != thumbs.shape):
                message = "the checkpoint's timeline was rendered for other targets or another image size"
                self.warn("timeline", f"FeatureVisCallback: {message}; the timeline restarts with this run.")
                self.epochs, self.thumbs = [], []
            self._saved_tags = None
        self.epochs.append(epoch)
        self.thumbs.append(thumbs)
        self.tags = list(tags)

    def columns(self) -> tuple[list[int], list[str], Tensor]:
        """The rendered epochs in ascending order, the row tags and the pictures, ``(T, E, 3, H, W)`` in [0, 1]."""
        order = sorted(range(len(self.epochs)), key=self.epochs.__getitem__)
        tiles = torch.stack([self.thumbs[i] for i in order], dim=1).float() / 255
        tags = self.tags if len(self.tags) == len(tiles) else [str(i) for i in range(len(tiles))]
        return [self.epochs[i] for i in order], tags, tiles

    def state_dict(self, tags: Sequence[str] | None) -> dict[str, Any]:
        """The timeline as checkpoint state, with the tags of the targets it shows."""
        thumbs = torch.stack(self.thumbs) if self.thumbs else None
        return {
            "epochs": list(self.epochs),
            "names": list(tags) if tags is not None else None,
            "thumbs": thumbs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the timeline saved by :meth:`state_dict`."""
        self.epochs = [int(e) for e in state["epochs"]]
        thumbs = state.get("thumbs")
        self.thumbs = list(thumbs.unbind(0)) if thumbs is not None else []
        self._saved_tags = state.get("names")
        self.tags = list(self._saved_tags or [])


__all__ = ["RenderOutputs", "Timeline", "WarnOnce"]
