"""Where renders go: images for every logger that can show them, scalars for every logger, PNGs, the timeline.

One place decides how a render is shown, so the callback only says *what* to log and *when*. Every logger gets
the scalars (``log_metrics``); loggers that can show images get the pictures, each through its own client
(TensorBoard's ``add_image``, W&B's ``log_image``, MLflow's ``log_image``); PNG files go under
``<log_dir>/<prefix>/`` for everyone, which is all a run without an image-capable logger gets. A logger whose
client rejects an image is skipped for that render (with one warning per logger), so one broken client never
costs the scalars, the other loggers' images or the PNG files.

Each epoch's PNG folder is written as a whole (:func:`featvis.folders.write_folder`: built in a hidden staging
folder, with a manifest, then renamed into place), so a run killed while writing leaves no folder that looks
complete, and :meth:`RenderOutputs.prune` can tell the folders featvis wrote from anything else.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from featvis import images as img
from featvis.engine.checks import check_bool, check_int
from featvis.folders import FolderError, remove_owned, remove_stale_siblings, write_folder
from featvis.hidden import ChannelSheets
from featvis.sheets import purity_curve
from featvis.timeline import Timeline

# An epoch's PNG folder, or a staging / moved-aside folder that write_folder made for it.
_EPOCH_ENTRY = re.compile(r"\.?(epoch_(\d+))(\.(partial|old)-.+)?")

# The loggers whose clients show images, and what to do when one of them rejects an image. Lightning imports
# these classes without their client libraries (wandb, mlflow), so naming them here costs no dependency.
_IMAGE_LOGGERS = (TensorBoardLogger, WandbLogger, MLFlowLogger)
_FIXES: dict[type[Logger], str] = {
    TensorBoardLogger: "check that its log folder is writable and upgrade tensorboard (pip install -U tensorboard)",
    WandbLogger: "upgrade wandb (pip install -U 'featvis[wandb]') and check the run's setup (wandb login, or "
    "WANDB_MODE=offline without a network)",
    MLFlowLogger: "upgrade mlflow (pip install -U 'featvis[mlflow]') and check that its tracking URI and artifact "
    "store are reachable and writable",
}


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
    ``<prefix>/timeline`` (targets x rendered epochs), the same for TensorBoard, W&B (with captions) and MLflow
    (image keys with steps); PNG files are ``<log_dir>/<prefix>/epoch_<NNN>/<tag>/<i>.png`` and
    ``<log_dir>/<prefix>/timeline.png``. Any other finished picture goes through :meth:`log_picture` as
    ``<prefix>/<name>`` and ``<log_dir>/<prefix>/<name>.png``.

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
        sheets: dict[str, Tensor] | None = None,
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
            sheets: finished pictures ``(3, H, W)`` in [0, 1] by name (e.g. ``channels/<layer>``), logged as
                ``<prefix>/<name>`` and written as ``<name>.png`` in the epoch's PNG folder.
        """
        sheets = sheets or {}
        if self.save_png:
            self._write_pngs(log_dir / self.prefix / f"epoch_{epoch:03d}", rgb, tags, sheets)
        # Scalars first: the flush after a TensorBoard logger's pictures (``_show``) then writes them too, so a
        # TensorBoard watching the run shows an epoch's numbers with its pictures, not minutes later.
        for logger in loggers:
            logger.log_metrics({**scalars, "epoch": epoch}, step=step)
        shown = self._image_loggers(loggers, log_dir)
        if shown:  # the pictures are made once, for every logger that shows them
            scale = self.scale(rgb.shape[-1])
            pictures = [
                (f"{self.prefix}/{tag}", img.grid(rgb[target : target + 1], scale=scale, padding=2), tag)
                for target, tag in enumerate(tags)
            ]
            caption = f"{len(tags)} targets (rows) x {rgb.shape[1]} images"
            pictures.append((f"{self.prefix}/all", img.grid(rgb, scale=scale, padding=2), caption))
            pictures += [(f"{self.prefix}/{name}", sheet, name) for name, sheet in sheets.items()]
            self._show(shown, log_dir, step, pictures)

    def log_timeline(
        self,
        loggers: Sequence[Logger],
        log_dir: Path,
        step: int,
        timeline: Timeline,
        name: str = "timeline",
        corner: str = "epoch",
    ) -> None:
        """Log the timeline: one row per target, one column per rendered epoch in ascending order, labelled.

        Target tags stand in a left margin, epoch numbers in a top margin. With ``save_png`` it also says where the
        PNG files went (an INFO line of Lightning's logger, shown on the console).

        Args:
            loggers: the trainer's loggers.
            log_dir: the run's folder, for ``<name>.png``.
            step: the step the picture is logged at (the trainer's global step at the end of fit).
            timeline: the rendered epochs and their pictures.
            name: the tag ``<prefix>/<name>`` and the file ``<log_dir>/<prefix>/<name>.png``; ``/`` makes
                sub-folders (e.g. ``channels/net.group3/timeline``).
            corner: the caption above the row labels, at the top left.
        """
        epochs, tags, tiles = timeline.columns()
        labels = [str(epoch) for epoch in epochs]
        picture = img.labelled_grid(
            tiles, tags, labels, self.scale(tiles.shape[-1]), padding=2, corner=corner
        )
        caption = f"{len(tags)} targets (rows) x epochs {epochs[0]}..{epochs[-1]} (columns)"
        path = self.log_picture(loggers, log_dir, step, name, picture, caption)
        if path is not None:
            rank_zero_info(f"featvis: PNGs under {log_dir / self.prefix}/epoch_*/, timeline {path}")

    def log_picture(
        self, loggers: Sequence[Logger], log_dir: Path, step: int, name: str, picture: Tensor, caption: str
    ) -> Path | None:
        """Log one finished picture as ``<prefix>/<name>`` to every image-capable logger, and as a PNG file.

        Args:
            loggers: the trainer's loggers.
            log_dir: the run's folder; with ``save_png`` the file is ``<log_dir>/<prefix>/<name>.png`` (its
                folders are created).
            step: the step the picture is logged at.
            name: plain names (letters, digits, ``.``, ``_``, ``-``) joined by ``/``, e.g. ``channels/net.conv``.
            picture: ``(3, H, W)`` RGB in [0, 1].
            caption: shown under the picture where the logger shows captions (W&B).

        Returns:
            The PNG file written, or None with ``save_png=False``.

        Raises:
            ValueError: a name that is not plain names joined by ``/`` (it must stay inside the PNG folder).
        """
        if not isinstance(name, str) or any(img.safe_name(part) != part for part in name.split("/")):
            raise ValueError(
                f"name must be plain names (letters, digits, '.', '_', '-') joined by '/', got {name!r}."
            )
        path = None
        if self.save_png:
            path = log_dir / self.prefix / f"{name}.png"
            img.save_png(picture, path)
        self._show(
            self._image_loggers(loggers, log_dir),
            log_dir,
            step,
            [(f"{self.prefix}/{name}", picture, caption)],
        )
        return path

    def log_layer_histories(
        self, loggers: Sequence[Logger], log_dir: Path, step: int, sheets: ChannelSheets
    ) -> None:
        """Log each channel-sheet layer's timeline and specialisation curve, at the end of fit.

        As ``<prefix>/channels/<layer>/timeline`` (channels x epochs) and ``<prefix>/channels/<layer>/
        specialisation`` (:func:`featvis.sheets.purity_curve`), with their PNG files under the same names.

        Args:
            loggers: the trainer's loggers.
            log_dir: the run's folder, for the PNG files.
            step: the step the pictures are logged at.
            sheets: the run's channel sheets, with their histories (:meth:`ChannelSheets.timelines`,
                :meth:`ChannelSheets.purity_history`).
        """
        for layer, timeline in sheets.timelines().items():
            self.log_timeline(loggers, log_dir, step, timeline, f"channels/{layer}/timeline", corner="epoch")
        for layer, (epochs, values, tags) in sheets.purity_history().items():
            curve = purity_curve(epochs, values, tags, title=f"{layer}: class purity of top examples")
            self.log_picture(loggers, log_dir, step, f"channels/{layer}/specialisation", curve, layer)

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

    def _write_pngs(self, folder: Path, rgb: Tensor, tags: Sequence[str], sheets: dict[str, Tensor]) -> None:
        """Write one render's PNG folder as a whole (replacing an earlier one of featvis's), or warn why not."""

        def write(staging: Path) -> None:
            img.write_image_folder(rgb, list(tags), staging)
            for name, sheet in sheets.items():
                img.save_png(sheet, staging / f"{name}.png")

        try:
            write_folder(folder, write, overwrite=True)
        except FolderError as err:  # e.g. a folder of that name that featvis did not write
            self.warn("png", f"FeatureVisCallback: PNGs not written: {err}")

    def _image_loggers(self, loggers: Sequence[Logger], log_dir: Path) -> list[Logger]:
        """The loggers that can show images; says once for each other kind where its images go instead."""
        for logger in loggers:
            if not isinstance(logger, _IMAGE_LOGGERS):
                name = type(logger).__name__
                # Not a warning: a CSVLogger is a deliberate choice, and the PNG files are the images it gets.
                self.warn(
                    f"no-images:{name}",
                    f"FeatureVisCallback: {name} cannot show images; {self._pngs(log_dir)}.",
                    info=True,
                )
        return [logger for logger in loggers if isinstance(logger, _IMAGE_LOGGERS)]

    def _pngs(self, log_dir: Path) -> str:
        """Where the images are, for a logger that does not show them."""
        if self.save_png:
            return f"they are written as PNG files under {log_dir / self.prefix}/"
        return (
            "save_png=False writes no PNG files either; add a TensorBoardLogger, WandbLogger or MLFlowLogger"
        )

    def _show(
        self, loggers: Sequence[Logger], log_dir: Path, step: int, pictures: Sequence[tuple[str, Tensor, str]]
    ) -> None:
        """Send ``(key, picture, caption)`` pictures to every logger in ``loggers``, each on its own.

        Args:
            loggers: loggers that can show images (:meth:`_image_loggers`).
            log_dir: the run's folder, named in the warning when a logger rejects an image.
            step: the step the pictures are logged at.
            pictures: ``(3, H, W)`` images in [0, 1] with their key (tag) and caption.
        """
        for logger in loggers:
            key = ""
            try:
                for key, picture, caption in pictures:
                    _show_image(logger, key, picture, step, caption)
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.flush()  # so a TensorBoard watching the run shows the epoch at once
            # Any error: one client's failure (an old version, a run that is not set up, a full disk) must not cost
            # the scalars, the other loggers' images or the PNG files, nor stop training.
            except Exception as err:
                name = type(logger).__name__
                pngs = f", and the PNG files go under {log_dir / self.prefix}/" if self.save_png else ""
                fix = next(
                    (fix for kind, fix in _FIXES.items() if isinstance(logger, kind)), "check its setup"
                )
                self.warn(
                    f"images:{name}:{id(logger)}",
                    f"FeatureVisCallback: {name} rejected the image {key!r} ({type(err).__name__}: {err}); it "
                    f"still gets the scalars, the other loggers the images{pngs}. To fix: {fix}.",
                )


def _show_image(logger: Logger, key: str, picture: Tensor, step: int, caption: str) -> None:
    """Log one ``(3, H, W)`` picture in [0, 1] through ``logger``'s own image call (one of ``_IMAGE_LOGGERS``).

    Args:
        logger: a TensorBoardLogger, WandbLogger or MLFlowLogger.
        key: the tag, ``<prefix>/<name>``.
        picture: the image.
        step: the step to log it at (TensorBoard's and MLflow's step, W&B's ``trainer/global_step``).
        caption: the caption shown under it where the logger shows one (W&B).
    """
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, picture, global_step=step, dataformats="CHW")
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[img.to_uint8(picture).numpy()], step=step, caption=[caption])
    elif isinstance(logger, MLFlowLogger):
        client, pixels = logger.experiment, img.to_uint8(picture).numpy()
        # mlflow >= 2.12 takes key and step (a step slider per key in its UI); older ones only artifact files.
        if {"key", "step"} <= inspect.signature(client.log_image).parameters.keys():
            client.log_image(logger.run_id, pixels, key=key, step=step)
        else:
            client.log_image(logger.run_id, pixels, artifact_file=f"{key}/step_{step:06d}.png")


__all__ = ["RenderOutputs", "WarnOnce"]
