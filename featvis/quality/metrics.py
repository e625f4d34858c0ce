"""Quality metrics of rendered feature visualisations.

Pure PyTorch (no Lightning). Every metric takes RGB images in [0, 1] as float ``(N, 3, H, W)`` tensors and
returns plain floats (or a small dataclass), so the numbers can be logged or compared across runs:

* :func:`spectral_gap` -- how far the images' radial log-amplitude spectrum is from that of real images
  (natural-image statistics; about 0.02 for 40 real test images against the training set, 1.0 for uniform noise).
* :func:`robustness` -- mean softmax probability of the target class under fresh random affine transforms that
  the optimisation never saw (a visualisation that only works at one exact pixel alignment scores low).
* :func:`feature_diversity` -- mean pairwise cosine distance between one target's images in a model's
  penultimate features, averaged over targets.
* :func:`transfer_accuracy` -- fraction of visualisations that independently trained reference classifiers
  assign to the intended class.
* :func:`plausibility` -- in a reference model's penultimate features, the distance of each visualisation to its
  nearest real images of the same class, relative to the same distance among real images (1.0 for real images).

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
from featvis.engine.hooks import device_and_dtype, preserved_modes

#: Added to FFT amplitudes before the log, so empty (all-constant) images give a finite spectrum.
LOG_EPS = 1e-8
#: A real image this close (cosine distance) to a visualisation counts as its copy and is skipped as its neighbour
#: (see :func:`plausibility_from_features`).
DUPLICATE_DISTANCE = 1e-5

Preprocess = Callable[[Tensor], Tensor]
RandomTransform = Callable[[Tensor, torch.Generator], Tensor]


# --------------------------------------------------------------------------------------------- input checks


def _check_images(images: Tensor, name: str = "images") -> Tensor:
    """Validate RGB images in [0, 1] of shape ``(N, 3, H, W)`` and return them as float32."""
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


def _check_labels(labels: Tensor | Sequence[int], count: int, name: str) -> Tensor:
    """Validate one integer label per image and return them as an int64 CPU tensor."""
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


def _final_linear(model: nn.Module) -> nn.Linear:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer and no features() method, so its penultimate "
            "features cannot be found; give it a features(x) method that returns (N, D) features."
        )
    return linears[-1]


def penultimate_features(
    model: nn.Module, images: Tensor, preprocess: Preprocess | None = None, batch_size: int = 500
) -> Tensor:
    """Penultimate-layer features of a classifier: the input of its final linear layer.

    Models with a ``features(x)`` method (the reference classifiers of ``benchmarks/reference_models.py``) are
    asked directly; otherwise a forward pre-hook on the last ``nn.Linear`` in ``model.modules()`` records its
    input (for featvis's ``SpeedNet`` that is the globally pooled 256-channel vector feeding ``head``).

    Args:
        model: the classifier; left in the train/eval state it had.
        images: RGB images in [0, 1], ``(N, 3, H, W)``.
        preprocess: maps RGB batches to the model's input space (e.g. ``module.colour.to_model``); None feeds
            RGB as is.
        batch_size: images per forward pass.

    Returns:
        ``(N, D)`` float32 features on the CPU.
    """
    images = _check_images(images)
    check_int("batch_size", batch_size, 1)
    device = device_and_dtype(model)[0]
    features_method = getattr(model, "features", None)
    captured: list[Tensor] = []
    handle = None
    if not callable(features_method):
        features_method = None

        def hook(module: nn.Module, inputs: tuple) -> None:
            captured.append(inputs[0].detach().flatten(1).float().cpu())

        handle = _final_linear(model).register_forward_pre_hook(hook)
    outputs = []
    try:
        with preserved_modes(model), torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(device)
                if preprocess is not None:
                    batch = preprocess(batch)
                if features_method is not None:
                    outputs.append(features_method(batch).detach().flatten(1).float().cpu())
                else:
                    captured.clear()
                    model(batch)
                    if len(captured) != 1:
                        raise ValueError(
                            f"the final linear layer of {type(model).__name__} ran {len(captured)} times in one "
                            "forward pass; give the model a features(x) method instead."
                        )
                    outputs.append(captured[0])
    finally:
        if handle is not None:
            handle.remove()
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
    images = _check_images(images)
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
    images = _check_images(images, "images")
    if isinstance(reference, Tensor) and reference.ndim == 1:
        b = reference.float().cpu()
        max_radius = b.numel()
    else:
        reference = _check_images(reference, "reference")
        if images.shape[-2:] != reference.shape[-2:]:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the reference images are "
                f"{tuple(reference.shape[-2:])}; compare images of the same size."
            )
        b = radial_log_spectrum(reference, max_radius)
    a = radial_log_spectrum(images, max_radius)
    return float((a - b).abs().mean())


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
    images = _check_images(images)
    targets = _check_labels(targets, images.shape[0], "targets")
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


# ------------------------------------------------------------------------------------- feature diversity


def _cosine_distances(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos`` between every row of ``a`` and every row of ``b`` (zero vectors count as distance 1)."""
    a = F.normalize(a.double(), dim=1, eps=1e-12)
    b = F.normalize(b.double(), dim=1, eps=1e-12)
    return (1 - a @ b.T).clamp_(min=0.0, max=2.0)


def _check_features(features: Tensor, name: str) -> Tensor:
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] == 0:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a non-empty (N, D) tensor, got {shape}; flatten features first.")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return features.detach().cpu()


def feature_diversity(features: Tensor, groups: Tensor | Sequence[int]) -> float:
    """Mean pairwise cosine distance within each group of feature vectors, averaged over groups.

    Groups with a single member are skipped (they have no pairs). Identical images give 0; mutually orthogonal
    features give 1.

    Args:
        features: ``(N, D)`` features, e.g. :func:`penultimate_features` of one target's visualisations.
        groups: the group (target) of each row, ``(N,)`` integers.

    Returns:
        The diversity, in [0, 2].
    """
    features = _check_features(features, "features")
    groups = _check_labels(groups, features.shape[0], "groups")
    values = []
    for group in torch.unique(groups):
        members = features[groups == group]
        count = members.shape[0]
        if count < 2:
            continue
        distances = _cosine_distances(members, members)
        values.append(float(distances.sum() / (count * (count - 1))))  # the diagonal is 0
    if not values:
        raise ValueError(
            "no group has two or more images, so there are no pairs to compare; pass >= 2 per target."
        )
    return sum(values) / len(values)


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
    images = _check_images(images)
    targets = _check_labels(targets, images.shape[0], "targets")
    check_int("batch_size", batch_size, 1)
    scores = []
    for model in models:
        with preserved_modes(model), torch.no_grad():
            predictions = _batched_logits(model, images, None, batch_size).argmax(dim=1)
        scores.append(float((predictions == targets).double().mean()))
    return TransferAccuracy(mean=sum(scores) / len(scores), per_model=tuple(scores))


# ----------------------------------------------------------------------------------------- plausibility


def _mean_knn_distance(
    queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None, drop_duplicates: bool
) -> Tensor:
    """Per query, the mean cosine distance to its ``k`` nearest rows of ``pool``.

    ``exclude`` (bool, queries x pool) marks pairs that must not count (a real image and itself);
    ``drop_duplicates`` also skips each query's nearest pool row if it lies within DUPLICATE_DISTANCE.
    """
    distances = _cosine_distances(queries, pool)
    if exclude is not None:
        distances = distances.masked_fill(exclude, math.inf)
    if drop_duplicates:
        # Skip at most one neighbour per query: the real image the query is a copy of, if any.
        nearest, where = distances.min(dim=1)
        copies = torch.nonzero(nearest <= DUPLICATE_DISTANCE).flatten()
        distances[copies, where[copies]] = math.inf
    available = torch.isfinite(distances).sum(dim=1)
    if int(available.min()) < k:
        raise ValueError(
            f"a class has only {int(available.min())} usable real images for k={k} nearest neighbours; "
            f"lower k or pass more real images per class."
        )
    return distances.topk(k, dim=1, largest=False).values.mean(dim=1)


def plausibility_from_features(
    vis_features: Tensor,
    vis_targets: Tensor | Sequence[int],
    real_features: Tensor,
    real_labels: Tensor | Sequence[int],
    k: int = 10,
) -> float:
    """:func:`plausibility` on precomputed features.

    For each visualisation, the mean cosine distance to its ``k`` nearest real images of the same class (if the
    nearest one coincides with it, distance <= 1e-5, that one is skipped, so a real image scored as a
    visualisation is compared with the other real images exactly as in the baseline). For each real image of
    the same classes, the mean cosine distance to its ``k`` nearest other real images of its class. The result is
    the ratio of the two means, with every class weighted by its number of visualisations.

    Args:
        vis_features: ``(N, D)`` features of the visualisations.
        vis_targets: intended class of each visualisation, ``(N,)``.
        real_features: ``(M, D)`` features of real images.
        real_labels: class of each real image, ``(M,)``.
        k: nearest neighbours.

    Returns:
        The ratio; 1.0 for real images from the same distribution, larger for less plausible images.
    """
    vis_features = _check_features(vis_features, "vis_features")
    real_features = _check_features(real_features, "real_features")
    if vis_features.shape[1] != real_features.shape[1]:
        raise ValueError(
            f"vis_features have {vis_features.shape[1]} dimensions but real_features {real_features.shape[1]}; "
            "compute both with the same model."
        )
    vis_targets = _check_labels(vis_targets, vis_features.shape[0], "vis_targets")
    real_labels = _check_labels(real_labels, real_features.shape[0], "real_labels")
    check_int("k", k, 1)
    vis_total = real_total = 0.0
    for target in torch.unique(vis_targets):
        weight = int((vis_targets == target).sum())
        pool = real_features[real_labels == target]
        if pool.shape[0] < k + 1:
            raise ValueError(
                f"class {int(target)} has {pool.shape[0]} real images; k={k} needs at least {k + 1} "
                "(each real image's k nearest other images). Lower k or pass more real images."
            )
        vis_dist = _mean_knn_distance(vis_features[vis_targets == target], pool, k, None, True)
        self_pairs = torch.eye(pool.shape[0], dtype=torch.bool)
        real_dist = _mean_knn_distance(pool, pool, k, self_pairs, False)
        vis_total += float(vis_dist.mean()) * weight
        real_total += float(real_dist.mean()) * weight
    if real_total <= 0:
        raise ValueError(
            "the real images' nearest-neighbour distance is 0 (all identical); the ratio is undefined."
        )
    return vis_total / real_total


def plausibility(
    reference_model: nn.Module,
    vis_rgb: Tensor,
    vis_targets: Tensor | Sequence[int],
    real_rgb: Tensor,
    real_labels: Tensor | Sequence[int],
    k: int = 10,
    batch_size: int = 500,
) -> float:
    """How close visualisations lie to real images of their class, relative to real images among themselves.

    In the reference model's penultimate features (:func:`penultimate_features`): the mean cosine distance from
    each visualisation to its ``k`` nearest real images of the same class, divided by the mean cosine distance
    from each real image to its ``k`` nearest other real images of its class (see
    :func:`plausibility_from_features`). Real images score about 1.0; good visualisations about 1.2 or less.

    Args:
        reference_model: a classifier that takes RGB in [0, 1].
        vis_rgb: visualisations, RGB in [0, 1], ``(N, 3, H, W)``.
        vis_targets: intended class of each visualisation.
        real_rgb: real images (e.g. the test set), RGB in [0, 1].
        real_labels: class of each real image.
        k: nearest neighbours.
        batch_size: images per forward pass.
    """
    vis = penultimate_features(reference_model, vis_rgb, batch_size=batch_size)
    real = penultimate_features(reference_model, real_rgb, batch_size=batch_size)
    return plausibility_from_features(vis, vis_targets, real, real_labels, k)
