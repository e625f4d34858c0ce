"""One scoring routine for rendered images, used by the callback, ``featvis render --metrics`` and the benchmarks.

:func:`score_render` takes a render's RGB images and the class each target stands for, plus whatever the caller
has (the rendered model, a real-image spectrum, reference models, real images), and returns every metric of
:mod:`featvis.quality.metrics` that those inputs allow, under one set of names. Callers only decide what to pass
and how to show the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from featvis.colour import ColourTransform, InputConvention, InputSpace, to_grey
from featvis.engine.hooks import device_and_dtype
from featvis.quality.features import feature_diversity, penultimate_features, plausibility_from_features
from featvis.quality.metrics import (
    colour_distance,
    radial_log_spectrum,
    robustness,
    spectral_gap,
    transfer_accuracy,
)


class RGBInput(nn.Module):
    """A classifier on model-space inputs seen as one on RGB in [0, 1]: ``model(colour.to_model(rgb))``.

    The metrics and reference models speak RGB; featvis's own models take model-space inputs. This wrapper is the
    one bridge between the two: it maps float RGB to model space on the images' device (through the luma,
    :func:`~featvis.colour.to_grey`, for a 1-channel input space) and casts to the model's floating dtype. It
    holds a private copy of ``colour``, so the caller's transform is never moved.

    Args:
        model: maps model-space images ``(N, C, H, W)`` to logits.
        colour: the model's input space (an ``InputConvention`` is taken too).
    """

    def __init__(self, model: nn.Module, colour: InputSpace | InputConvention) -> None:
        super().__init__()
        self.model = model
        device, self.dtype = device_and_dtype(model)
        space = colour.space() if isinstance(colour, InputConvention) else colour
        self.colour: InputSpace = space.copy(device)

    def forward(self, rgb: Tensor) -> Tensor:
        colour = self.colour.to(rgb.device) if isinstance(self.colour, ColourTransform) else self.colour
        rgb = rgb.float()
        return self.model(colour.to_model(to_grey(rgb) if colour.channels == 1 else rgb).to(self.dtype))


def reference_spectrum(images: Tensor, size: int, max_images: int | None = None) -> Tensor:
    """Radial log spectrum of real images (:func:`radial_log_spectrum`), to compare renders of ``size`` px with.

    Args:
        images: real images, ``(N, 3, H, W)`` uint8 or float RGB in [0, 1].
        size: side length of the renders; radii go up to ``min(16, size // 2)``.
        max_images: use at most this many, evenly spaced (None: all).
    """
    if max_images is not None:
        images = images[:: max(1, images.shape[0] // max_images)][:max_images]
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return radial_log_spectrum(images, max_radius=min(16, size // 2))


@dataclass
class QualityReport:
    """What :func:`score_render` measured.

    Attributes:
        scores: metric name to value: ``robustness``, ``diversity``, ``spectral_gap``, ``colour_distance``,
            ``transfer_accuracy`` (mean over references) and ``transfer_accuracy/<name>``, ``plausibility`` and
            ``plausibility/<name>``, ``reference_diversity`` and ``diversity_vs_real`` (and per ``<name>``); only
            those the inputs allow.
        skipped: metric name to the reason it could not be computed (e.g. a model without a linear head).
    """

    scores: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def score_render(
    rgb: Tensor,
    classes: Sequence[int | None],
    *,
    model: nn.Module | None = None,
    spectrum: Tensor | None = None,
    references: Mapping[str, nn.Module] | None = None,
    real: tuple[Tensor, Tensor] | None = None,
    real_features: dict[str, Tensor] | None = None,
    real_colours: Tensor | None = None,
    robustness_repeats: int = 8,
    seed: int = 12345,
    k: int = 10,
) -> QualityReport:
    """Score rendered images with every metric the given inputs allow.

    Args:
        rgb: ``(T, K, 3, H, W)`` rendered images, RGB in [0, 1]: ``K`` images for each of ``T`` targets.
        classes: per target, the class its images should show, or None for a hidden-unit target (those take
            part in ``diversity`` and ``spectral_gap`` only).
        model: the classifier the images were rendered for, taking RGB (wrap a model-space one in
            :class:`RGBInput`): ``robustness`` (class targets) and ``diversity`` (``K >= 2``).
        spectrum: :func:`reference_spectrum` of real images: ``spectral_gap``.
        references: independently trained classifiers taking RGB, by name: ``transfer_accuracy`` and (``K >= 2``)
            ``reference_diversity``, the within-target diversity in their penultimate features: unlike
            ``diversity`` it is not measured by the network the images were optimised for.
        real: real images (RGB in [0, 1]) and their labels: ``plausibility`` in each reference's features and
            ``diversity_vs_real``, ``reference_diversity`` over the within-class diversity of the real images
            (1: as varied as photographs of a class).
        real_features: cache of the real images' features per reference name, filled in when missing, so
            scoring several renders against the same real images computes them once.
        real_colours: real images, ``(N, 3, H, W)`` RGB in [0, 1] of any size, for ``colour_distance``; None
            takes the images of ``real`` when given. For a grayscale model pass grey ones
            (``grey_to_rgb(to_grey(images))``), the colours its renders can have.
        robustness_repeats: random transforms per image for ``robustness``.
        seed: seed of ``robustness``'s private generator; pick one the render did not use.
        k: nearest neighbours of ``plausibility``.
    """
    count, per_target = rgb.shape[:2]
    images = rgb.flatten(0, 1).float()
    rows = [row for row, cls in enumerate(classes) if cls is not None]
    class_images = rgb[rows].flatten(0, 1).float()
    class_targets = torch.tensor([classes[row] for row in rows], dtype=torch.long).repeat_interleave(
        per_target
    )
    report = QualityReport()
    scores = report.scores
    if model is not None:
        if rows:
            # Fresh random shifts/zooms/rotations the render never saw.
            scores["robustness"] = robustness(
                model, class_images, class_targets, repeats=robustness_repeats, seed=seed
            )
        if per_target >= 2:
            try:
                features = penultimate_features(model, images)
            except ValueError as err:  # e.g. no nn.Linear head
                report.skipped["diversity"] = str(err)
            else:
                scores["diversity"] = feature_diversity(
                    features, torch.arange(count).repeat_interleave(per_target)
                )
    if spectrum is not None:
        scores["spectral_gap"] = spectral_gap(images, spectrum)
    colours = real_colours if real_colours is not None else (real[0] if real is not None else None)
    if colours is not None:
        scores["colour_distance"] = colour_distance(images, colours)
    if references and rows:
        transfer = transfer_accuracy(list(references.values()), class_images, class_targets)
        scores["transfer_accuracy"] = transfer.mean
        for name, value in zip(references, transfer.per_model, strict=True):
            scores[f"transfer_accuracy/{name}"] = value
    if references and real is not None and rows:
        cache = {} if real_features is None else real_features
        values = []
        for name, reference in references.items():
            if name not in cache:
                cache[name] = penultimate_features(reference, real[0])
            vis_features = penultimate_features(reference, class_images)
            value = plausibility_from_features(vis_features, class_targets, cache[name], real[1], k)
            scores[f"plausibility/{name}"] = value
            values.append(value)
        scores["plausibility"] = sum(values) / len(values)
    if references and per_target >= 2:
        _reference_diversity(report, images, per_target, references, real, real_features)
    return report


def _reference_diversity(
    report: QualityReport,
    images: Tensor,
    per_target: int,
    references: Mapping[str, nn.Module],
    real: tuple[Tensor, Tensor] | None,
    real_features: dict[str, Tensor] | None,
) -> None:
    """``reference_diversity`` (within-target diversity in each reference's penultimate features, averaged) and,
    with labelled real images, ``diversity_vs_real``: that over the within-class diversity of the real images."""
    groups = torch.arange(images.shape[0] // per_target).repeat_interleave(per_target)
    cache = {} if real_features is None else real_features
    values, relative = [], []
    for name, reference in references.items():
        try:
            value = feature_diversity(penultimate_features(reference, images), groups)
        except ValueError as err:  # e.g. no nn.Linear head
            report.skipped["reference_diversity"] = str(err)
            return
        report.scores[f"reference_diversity/{name}"] = value
        values.append(value)
        if real is not None:
            if name not in cache:
                cache[name] = penultimate_features(reference, real[0])
            relative.append(value / feature_diversity(cache[name], real[1]))
            report.scores[f"diversity_vs_real/{name}"] = relative[-1]
    report.scores["reference_diversity"] = sum(values) / len(values)
    if relative:
        report.scores["diversity_vs_real"] = sum(relative) / len(relative)


__all__ = ["QualityReport", "RGBInput", "reference_spectrum", "score_render"]
