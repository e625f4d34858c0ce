"""Quality metrics of rendered feature visualisations.

Pure PyTorch (no Lightning). Every metric takes RGB images in [0, 1] as float ``(N, 3, H, W)`` tensors and
returns plain floats (or a small dataclass), so the numbers can be logged or compared across runs:

* :func:`spectral_gap` -- how far the images' radial log-amplitude spectrum is from that of real images
  (natural-image statistics; about 0.02 for 40 real test images against the training set, 1.0 for uniform noise).
* :func:`colour_distance` -- Fréchet distance between the images' pixel-colour distributions and real images'
  (the spectrum is grey-level; this sees hue shifts, over- or under-saturation and colour contrast).
* :func:`robustness` -- mean softmax probability of the target class under fresh random affine transforms that
  the optimisation never saw (a visualisation that only works at one exact pixel alignment scores low).
* :func:`transfer_accuracy` -- fraction of visualisations that independently trained reference classifiers
  assign to the intended class.

The metrics in a classifier's feature space (diversity, plausibility) are in :mod:`featvis.quality.features`.

Models are run in eval mode without gradients; every submodule's train/eval flag is restored afterwards and no
global random state is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featvis.engine.checks import check_int
from featvis.engine.colour_prior import frechet_squared, psd_root
from featvis.engine.hooks import device_and_dtype, preserved_modes

#: Added to FFT amplitudes before the log, so empty (all-constant) images give a finite spectrum.
LOG_EPS = 1e-8

Preprocess = Callable[[Tensor], Tensor]
RandomTransform = Callable[[Tensor, torch.Generator], Tensor]


# --------------------------------------------------------------------------------------------- input checks


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """(Shared by every quality metric.) Validate RGB images in [0, 1] of shape ``(N, 3, H, W)`` and return them as float32."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, 3, H, W), got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W) (RGB), got {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0) for a single image."
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} holds no images (shape {tuple(images.shape)}).")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be float RGB in [0, 1], got dtype {images.dtype}; convert uint8 with images.float() / 255."
        )
    images = images.detach().float()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    low, high = float(images.min()), float(images.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"{name} must be RGB in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
            "map model-space images to RGB first (e.g. colour.to_rgb) and clamp to [0, 1]."
        )
    return images


def check_labels(labels: Tensor | Sequence[int], count: int, name: str) -> Tensor:
    """(Shared by every quality metric.) Validate one integer label per image and return them as an int64 CPU tensor."""
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}.")
    if labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(f"{name} must hold one label per image ({count}), got shape {tuple(labels.shape)}.")
    if count and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class indices >= 0, got {int(labels.min())}.")
    return labels.long()


# ------------------------------------------------------------------------------------------ running models


def _batched_logits(
    model: nn.Module, images: Tensor, preprocess: Preprocess | None, batch_size: int
) -> Tensor:
    """Float logits of ``model`` for RGB ``images``, in batches, on the CPU (caller holds eval mode and no_grad)."""
    device = device_and_dtype(model)[0]
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        if preprocess is not None:
            batch = preprocess(batch)
        logits = model(batch)
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ValueError(
                f"the model must return (N, classes) logits, got "
                f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}."
            )
        outputs.append(logits.float().cpu())
    return torch.cat(outputs)


# ------------------------------------------------------------------------------------------ spectral gap


def _radius_bins(height: int, width: int) -> Tensor:
    """Integer radius (rounded Euclidean frequency index) of every FFT coefficient, ``(H, W)``."""
    fy = torch.fft.fftfreq(height) * height
    fx = torch.fft.fftfreq(width) * width
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long()


def radial_log_spectrum(images: Tensor, max_radius: int = 16, chunk_size: int = 2048) -> Tensor:
    """Mean radial log-amplitude spectrum of a set of images.

    Each image is reduced to grey as the plain mean of its R, G and B channels (not luma: the mean weights the
    channels equally, so colour-only patterns still register), its own mean is removed, and the amplitude of its
    orthonormal 2-D FFT is taken. ``ln(amplitude + 1e-8)`` is averaged over all coefficients whose rounded
    frequency radius (in cycles per image) equals r, and over all images, for r = 1 .. ``max_radius``.

    Args:
        images: RGB images in [0, 1], ``(N, 3, H, W)``.
        max_radius: largest radius bin; at most ``min(H, W) // 2`` (the Nyquist frequency), 16 for 32-px images.
        chunk_size: images per FFT call, to bound memory.

    Returns:
        ``(max_radius,)`` float32 tensor; entry ``r - 1`` is the mean log amplitude at radius ``r``.
    """
    images = check_images(images)
    check_int("max_radius", max_radius, 1)
    check_int("chunk_size", chunk_size, 1)
    height, width = images.shape[-2:]
    if max_radius > min(height, width) // 2:
        raise ValueError(
            f"max_radius={max_radius} exceeds the Nyquist radius {min(height, width) // 2} of "
            f"{height}x{width} images; use max_radius <= {min(height, width) // 2}."
        )
    radius = _radius_bins(height, width).flatten()
    in_range = (radius >= 1) & (radius <= max_radius)
    bins = radius[in_range] - 1
    counts = torch.bincount(bins, minlength=max_radius).double()
    total = torch.zeros(max_radius, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk_size):
        grey = images[start : start + chunk_size].cpu().mean(dim=1)
        grey = grey - grey.mean(dim=(-2, -1), keepdim=True)
        amplitude = torch.fft.fft2(grey, norm="ortho").abs()
        log_amp = torch.log(amplitude + LOG_EPS).flatten(1)[:, in_range].double()
        total += torch.zeros(max_radius, dtype=torch.float64).index_add_(0, bins, log_amp.sum(dim=0))
    return (total / (counts * images.shape[0])).float()


def spectral_gap(images: Tensor, reference: Tensor, max_radius: int = 16) -> float:
    """Mean absolute difference between the radial log-amplitude spectra of two image sets.

    Uses :func:`radial_log_spectrum` (grey = channel mean, orthonormal FFT, natural log, radii 1..16). With
    those choices 40 real CIFAR-10 test images score about 0.02 against the training set (the full test set
    0.002), and uniform noise in [0, 1] scores 1.00, matching the calibration targets; the result does not
    depend on the FFT normalisation, only on the log base (log2 would give 1.45 for noise).

    Args:
        images: RGB images in [0, 1], ``(N, 3, H, W)``, e.g. visualisations.
        reference: RGB images in [0, 1] of the same size, e.g. real test images; or their precomputed
            :func:`radial_log_spectrum` (1-D), whose length then sets ``max_radius``.
        max_radius: largest radius bin (see :func:`radial_log_spectrum`).

    Returns:
        The gap, >= 0; 0 for identical sets.
    """
    images = check_images(images, "images")
    if isinstance(reference, Tensor) and reference.ndim == 1:
        b = reference.float().cpu()
        max_radius = b.numel()
    else:
        reference = check_images(reference, "reference")
        if images.shape[-2:] != reference.shape[-2:]:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the reference images are "
                f"{tuple(reference.shape[-2:])}; compare images of the same size."
            )
        b = radial_log_spectrum(reference, max_radius)
    a = radial_log_spectrum(images, max_radius)
    return float((a - b).abs().mean())


# -------------------------------------------------------------------------------------------- colour distance


def _colour_moments(images: Tensor, name: str, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Mean ``(3,)`` and population covariance ``(3, 3)`` in float64 of the pixel colours of ``(N, 3, H, W)`` images."""
    if (
        isinstance(images, Tensor)
        and images.dtype == torch.uint8
        and images.ndim == 4
        and images.shape[1] == 3
    ):
        chunks = [images[i : i + chunk_size].double() / 255 for i in range(0, images.shape[0], chunk_size)]
    else:
        images = check_images(images, name)
        chunks = [images[i : i + chunk_size].double() for i in range(0, images.shape[0], chunk_size)]
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    for chunk in chunks:  # float64 one chunk at a time: a training set would not fit twice
        pixels = chunk.cpu().transpose(0, 1).reshape(3, -1)
        total += pixels.sum(dim=1)
        outer += pixels @ pixels.T
    count = sum(chunk[:, 0].numel() for chunk in chunks)
    mean = total / count
    return mean, outer / count - torch.outer(mean, mean)


def colour_distance(rgb: Tensor, real: Tensor) -> float:
    """Fréchet distance between the pixel-colour distributions of two image sets, in RGB units.

    Each set's pixels are summarised by their mean colour and 3x3 colour covariance, and the result is the
    Fréchet (2-Wasserstein) distance between the two Gaussians, ``sqrt(|m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^½))``
    (FID's formula on colours; FID reports its square). :func:`spectral_gap` compares grey-level spectra, so it
    cannot see colour: renders with a natural spectrum can still be garish. This sees what it misses: a shift of
    hue or of the mean colour (the means), and too much or too little saturation and colour contrast (the
    covariance: saturated images spread far from the grey axis, grey ones not at all). The image sizes and counts
    may differ. On CIFAR-10, 40 test images score about 0.05 against a training batch of 10,000 (1,000 test
    images 0.01); the same 40 in grey 0.14, with their saturation tripled 0.20, uniform noise 0.33.

    Args:
        rgb: RGB images in [0, 1], ``(N, 3, H, W)``, e.g. visualisations.
        real: real images, ``(M, 3, H', W')`` float RGB in [0, 1] or uint8.

    Returns:
        The distance, >= 0 (about 0 for identical sets, at most sqrt(4.5) for images in [0, 1]).
    """
    mean_a, cov_a = _colour_moments(rgb, "rgb")
    mean_b, cov_b = _colour_moments(real, "real")
    squared = frechet_squared(mean_b, cov_b, mean_a, psd_root(cov_a))
    return math.sqrt(max(float(squared), 0.0))


# ------------------------------------------------------------------------------------------- robustness


def random_affine(
    images: Tensor,
    generator: torch.Generator,
    max_shift: float = 3.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_degrees: float = 10.0,
) -> Tensor:
    """Random per-image shift, scale and rotation, resampled bilinearly with reflected borders.

    Args:
        images: ``(N, C, H, W)`` images.
        generator: private random source on the images' device (the global one is never used).
        max_shift: largest shift in pixels along each axis.
        scale_range: range of the zoom factor.
        max_degrees: largest rotation in degrees, either way.

    Returns:
        The transformed images, same shape.
    """
    n, _, height, width = images.shape
    device = images.device

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, device=generator.device).to(device)

    angle = uniform(-max_degrees, max_degrees) * (math.pi / 180)
    scale = uniform(*scale_range)
    shift_x = uniform(-max_shift, max_shift) * (2 / width)  # affine_grid coordinates span [-1, 1]
    shift_y = uniform(-max_shift, max_shift) * (2 / height)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def robustness(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int],
    preprocess: Preprocess | None = None,
    transform: RandomTransform | None = None,
    repeats: int = 8,
    seed: int = 12345,
    batch_size: int = 500,
) -> float:
    """Mean softmax probability of each visualisation's target class under fresh random transforms.

    Every image is transformed ``repeats`` times by ``transform`` with a private ``torch.Generator`` seeded by
    ``seed`` (pick one the render did not use), and the target-class probabilities are averaged. The model is
    run in eval mode without gradients, its train/eval flags are restored, and the global RNG is untouched.

    Args:
        model: the classifier the images were optimised for.
        images: RGB visualisations in [0, 1], ``(N, 3, H, W)``.
        targets: the intended class of each image, ``(N,)``.
        preprocess: maps RGB to the model's input space (e.g. ``module.colour.to_model``); None feeds RGB.
        transform: ``transform(images, generator) -> images``; None uses :func:`random_affine` (shift up to
            3 px, zoom 0.9-1.1, rotation up to 10 degrees). Engine transforms such as
            ``featvis.engine.default_transforms()`` have this signature too.
        repeats: random draws per image.
        seed: seed of the private generator.
        batch_size: images per forward pass.

    Returns:
        Mean target probability in [0, 1].
    """
    images = check_images(images)
    targets = check_labels(targets, images.shape[0], "targets")
    check_int("repeats", repeats, 1)
    check_int("batch_size", batch_size, 1)
    transform = transform or random_affine
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with preserved_modes(model), torch.no_grad():
        for _ in range(repeats):
            moved = transform(images, generator)
            if moved.shape[0] != images.shape[0]:
                raise ValueError(
                    f"transform returned {moved.shape[0]} images for {images.shape[0]}; it must keep the batch."
                )
            logits = _batched_logits(model, moved, preprocess, batch_size)
            if int(targets.max()) >= logits.shape[1]:
                raise ValueError(
                    f"target {int(targets.max())} is out of range for a model with {logits.shape[1]} classes."
                )
            probs = logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
            total += float(probs.double().mean())
    return total / repeats


# -------------------------------------------------------------------------------------- transfer accuracy


@dataclass(frozen=True)
class TransferAccuracy:
    """Fraction of images each reference model assigns to the intended class.

    Attributes:
        mean: mean over the reference models.
        per_model: one fraction per reference model, in the order given.
    """

    mean: float
    per_model: tuple[float, ...]

    def __float__(self) -> float:
        return self.mean


def transfer_accuracy(
    reference_models: nn.Module | Sequence[nn.Module],
    images: Tensor,
    targets: Tensor | Sequence[int],
    batch_size: int = 500,
) -> TransferAccuracy:
    """How often independently trained classifiers assign the visualisations to their intended classes.

    Args:
        reference_models: one classifier or several; each takes RGB in [0, 1] (normalising inside) and returns
            ``(N, classes)`` logits. Their train/eval flags are restored afterwards.
        images: RGB images in [0, 1], ``(N, 3, H, W)``.
        targets: intended class of each image, ``(N,)``.
        batch_size: images per forward pass.

    Returns:
        The per-model fractions and their mean; ``float(result)`` is the mean.
    """
    models = [reference_models] if isinstance(reference_models, nn.Module) else list(reference_models)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise ValueError("reference_models must be an nn.Module or a non-empty sequence of nn.Modules.")
    images = check_images(images)
    targets = check_labels(targets, images.shape[0], "targets")
    check_int("batch_size", batch_size, 1)
    scores = []
    for model in models:
        with preserved_modes(model), torch.no_grad():
            predictions = _batched_logits(model, images, None, batch_size).argmax(dim=1)
        scores.append(float((predictions == targets).double().mean()))
    return TransferAccuracy(mean=sum(scores) / len(scores), per_model=tuple(scores))
