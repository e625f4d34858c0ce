"""Where renders go: TensorBoard images, scalars for every logger, PNG files and the timeline.

One place decides how a render is shown, so the callback only says *what* to log and *when*. Every logger gets
the scalars (``log_metrics``); loggers that can show images get the pictures; PNG files go under
``<log_dir>/<prefix>/`` for everyone, which is all a run without an image-capable logger gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from featvis import images as img
from featvis.engine.checks import check_bool, check_int


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
        step: int,
        rgb: Tensor,
        tags: Sequence[str],
        scalars: dict[str, float],
    ) -> None:
        """Log one render.

        Args:
            loggers: the trainer's loggers.
            log_dir: the run's folder, for the PNG files.
            step: the step the pictures and scalars are logged at (the epoch).
            rgb: ``(T, K, 3, H, W)`` images in [0, 1].
            tags: one tag per target.
            scalars: values to log, keyed by their full tag.
        """
        if self.save_png:
            img.write_image_folder(rgb, list(tags), log_dir / self.prefix / f"epoch_{step:03d}")
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
            logger.log_metrics(scalars, step=step)

    def log_timeline(
        self, loggers: Sequence[Logger], log_dir: Path, epochs: Sequence[int], thumbs: Tensor
    ) -> None:
        """Log the timeline: one row per target, one column per rendered epoch in ascending order.

        Args:
            loggers: the trainer's loggers.
            log_dir: the run's folder, for ``timeline.png``.
            epochs: the rendered epochs, in the order of ``thumbs``.
            thumbs: ``(E, T, 3, H, W)`` uint8, the first image of each target at each rendered epoch.
        """
        order = sorted(range(len(epochs)), key=lambda i: epochs[i])
        tiles = thumbs[order].transpose(0, 1).float() / 255  # (T, E, 3, H, W)
        picture = img.grid(tiles, scale=self.scale(tiles.shape[-1]), padding=2)
        if self.save_png:
            img.save_png(picture, log_dir / self.prefix / "timeline.png")
        for writer in self._writers(loggers):
            writer.add_image(f"{self.prefix}/timeline", picture, global_step=max(epochs), dataformats="CHW")
            writer.flush()

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


__all__ = ["RenderOutputs", "Timeline", "WarnOnce"]
