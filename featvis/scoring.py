"""The quality scalars a run logs beside each render: one scorer per callback, holding what it needs between epochs.

:func:`featvis.quality.score_render` does the measuring; :class:`RunScorer` only gathers its inputs during a run:
the rendered model seen from RGB, the training images' spectrum and a sample of their colours (both taken once per
run from the datamodule's ``split("train")``, for ``spectral_gap`` and ``colour_distance``), and an optional reference classifier (a checkpoint path loaded at setup, or a module). It
renames the scores to the scalar names the callback has logged since its first release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from featvis.basis import first_loader, forked_random_states, read_training_images
from featvis.checkpoints import load_module
from featvis.colour import ColourTransform, InputSpace
from featvis.engine import RenderConfig, fork_rng
from featvis.outputs import WarnOnce
from featvis.quality import RGBInput, reference_spectrum, score_render

#: Training images the spectrum and the colour statistics are computed from (evenly spaced): stable means, in a
#: fraction of a second.
SPECTRUM_IMAGES = 5000
#: Training images a drop-in run reads from its dataloader for phase-only renders, which draw one spectrum per
#: rendered image: plenty of choice, and their central crops stay small (about 43 MB as uint8 at 224 px).
SPECTRA_IMAGES = 512


class RunScorer:
    """Scores a callback's renders with the metrics and the reference model it was given.

    Args:
        metrics: score robustness, spectral gap and diversity under the rendered model.
        reference_model: a ``ClassifierModule`` checkpoint path, an ``nn.Module`` mapping model-space images to
            logits, or None.
        seed: the callback's render seed; scores draw fresh transforms from ``seed + 1``.
        warn: the callback's warn-once record.
    """

    def __init__(
        self, metrics: bool, reference_model: str | Path | nn.Module | None, seed: int, warn: WarnOnce
    ) -> None:
        if reference_model is not None and not isinstance(reference_model, str | Path | nn.Module):
            raise ValueError(
                f"reference_model must be a checkpoint path or an nn.Module, got {reference_model!r}."
            )
        self.metrics, self.reference_model, self.seed, self.warn = metrics, reference_model, seed, warn
        self._reference: nn.Module | None = None
        self._spectrum: Tensor | None = None
        self._colours: Tensor | None = None  # uint8 training images for colour_distance; empty without them
        self._spectra: Tensor | None = None  # training images for phase-only renders (uint8), read once

    @property
    def active(self) -> bool:
        """Whether there is anything to score."""
        return self.metrics or self.reference_model is not None

    def setup(self) -> None:
        """Load the reference checkpoint, if one was named (before training, so a bad path fails early)."""
        if isinstance(self.reference_model, str | Path):
            # A bad path or a foreign file fails here in one line (CheckpointError is a ValueError).
            self._reference = load_module(self.reference_model)
        elif isinstance(self.reference_model, nn.Module):
            self._reference = self.reference_model

    def spectra(
        self, config: RenderConfig, trainer: Any, model: nn.Module, space: InputSpace, size: tuple[int, int]
    ) -> Tensor | None:
        """The training images (RGB in [0, 1]) whose amplitude spectra a phase-only render keeps, or a
        ``fourier_scale="data"`` render averages; None for other settings. Read once per run: the datamodule's
        ``split("train")`` (the sample the metrics compare with) when it has one of the render's size, else the
        run's training dataloader (a drop-in run).

        Args:
            config: the render settings (its ``parameterisation`` and ``seed`` are used).
            trainer: the Lightning trainer (its datamodule or ``train_dataloader``), or None.
            model: the rendered model (its device's random state is forked around the read).
            space: the model's input space; the loader's images go back to RGB through it.
            size: ``(height, width)`` of the renders.

        Raises:
            ValueError: the settings take spectra (``config.needs_spectra``) and neither source gives images.
        """
        if not config.needs_spectra:
            return None
        if self._spectra is None:
            datamodule = getattr(trainer, "datamodule", None)
            if callable(getattr(datamodule, "split", None)):
                self._spectrum_for(datamodule, torch.Size(size))
            images = self._colours if self._colours is not None and len(self._colours) else None
            if images is None:
                images = _loader_images(trainer, model, space, config.seed)
            if images is None:
                raise ValueError(
                    f"{config.spectra_settings} takes training images, and this run has neither a "
                    "datamodule with split('train') nor a training DataLoader whose batches hold "
                    f"(N, {space.channels}, H, W) image tensors; keep the defaults."
                )
            self._spectra = images
        images = (
            self._spectra
        )  # kept as they came (8-bit: a quarter of float32's memory), handed out as floats
        return images.float().div(255) if images.dtype == torch.uint8 else images.float()

    def scores(
        self, rgb: Tensor, classes: list[int | None], model: nn.Module, colour: Any, datamodule: Any
    ) -> dict[str, float]:
        """The quality scalars of one render, by their logged names (without the callback's prefix).

        Args:
            rgb: ``(T, K, 3, H, W)`` rendered images in [0, 1].
            classes: per target, its class index or None (hidden units).
            model: the rendered model (model-space inputs).
            colour: the model's input space (a :class:`ColourTransform` or another input space).
            datamodule: the run's datamodule or None; ``split("train")`` gives the spectrum's images.
        """
        references = None
        if self._reference is not None:  # in the reference's own colour transform if it has one
            references = {
                "reference": RGBInput(self._reference, ColourTransform.find(self._reference) or colour)
            }
        with torch.inference_mode(False), torch.no_grad(), fork_rng(model):
            report = score_render(
                rgb,
                classes,
                model=RGBInput(model, colour) if self.metrics else None,
                spectrum=self._spectrum_for(datamodule, rgb.shape[-2:]) if self.metrics else None,
                real_colours=self._colours
                if self.metrics and self._colours is not None and len(self._colours)
                else None,
                references=references,
                robustness_repeats=4,
                seed=self.seed + 1,  # fresh transforms: the render's own seed differs
            )
        for metric, reason in report.skipped.items():
            self.warn(metric, f"FeatureVisCallback: no {metric} metric ({reason})")
        values = {key: value for key, value in report.scores.items() if "/" not in key}
        if "transfer_accuracy" in values:  # the scalar's name since the first release
            values["transfer_acc"] = values.pop("transfer_accuracy")
        return values

    def _spectrum_for(self, datamodule: Any, size: torch.Size) -> Tensor | None:
        if self._spectrum is None:  # computed once per run
            self._spectrum, self._colours = _train_statistics(datamodule, tuple(size), self.warn)
        return self._spectrum if self._spectrum.numel() else None


def training_sample(images: Tensor) -> Tensor:
    """Up to :data:`SPECTRUM_IMAGES` evenly spaced images of a training set: what the metrics compare with, and
    (the same images in the callback and in ``featvis render``) what phase-only renders take spectra from."""
    return images[:: max(1, images.shape[0] // SPECTRUM_IMAGES)][:SPECTRUM_IMAGES]


def _loader_images(trainer: Any, model: nn.Module, space: InputSpace, seed: int) -> Tensor | None:
    """The central 3/4 of up to :data:`SPECTRA_IMAGES` training images of the run's dataloader, mapped back to RGB
    in [0, 1] (grey for a 1-channel space, repeated to 3 channels); None without a loader of images.

    Training batches come augmented, often with padding: ``RandomCrop(32, padding=4)`` leaves black bands up to 4
    px wide at the edges, and a band's straight edge puts its energy on the spectrum's axes, which phase-only
    renders then show as a plaid of stripes. The central 3/4 is free of such bands; ``render`` resizes the crops
    to the render's size. The read is seeded with the render seed, so random training transforms give the same
    images on every rank and after a resume: the renders of a resumed run match those of an uninterrupted one.
    """
    loader = first_loader(getattr(trainer, "train_dataloader", None))
    if loader is None:
        return None
    with forked_random_states(model, seed):
        images = read_training_images(loader, space, SPECTRA_IMAGES, max_pixels=None)
    if images is None:
        return None
    height, width = images.shape[-2:]
    images = images[..., height // 8 : height - height // 8, width // 8 : width - width // 8]
    return images.clamp(0, 1).expand(-1, 3, -1, -1).mul(255).round().to(torch.uint8)


def _train_statistics(datamodule: Any, size: tuple[int, ...], warn: WarnOnce) -> tuple[Tensor, Tensor]:
    """Radial log spectrum and colour sample of (up to :data:`SPECTRUM_IMAGES`) training images; empty without."""
    split = getattr(datamodule, "split", None)
    images = split("train")[0] if callable(split) else None
    if images is not None and images.ndim == 4 and images.shape[1] == 3 and tuple(images.shape[-2:]) == size:
        sample = training_sample(images)
        return reference_spectrum(sample, min(size)), sample
    shape = "none" if images is None else tuple(images.shape[1:])
    message = f"training images: {shape}; renders: {size} px; it needs a datamodule with split('train')"
    warn("spectrum", f"FeatureVisCallback: no spectral_gap or colour_distance ({message}).", info=True)
    return torch.empty(0), torch.empty(0)


__all__ = ["SPECTRA_IMAGES", "SPECTRUM_IMAGES", "RunScorer", "training_sample"]
