"""Quality metrics in a classifier's feature space: penultimate features, diversity and plausibility.

Pure PyTorch (no Lightning), like :mod:`featvis.quality.metrics`:

* :func:`penultimate_features` -- the input of a classifier's final linear layer (or its ``features(x)``).
* :func:`feature_diversity` -- mean pairwise cosine distance between one target's images in those features,
  averaged over targets.
* :func:`plausibility` -- in a reference model's penultimate features, the distance of each visualisation to its
  nearest real images of the same class, relative to the same distance among real images (1.0 for real images).
* :func:`confidence_frontier` -- real images' own trade-off: the within-class diversity of each class's ``k``
  images a model is surest of, relative to the whole class's, against their mean target probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featvis.engine.checks import check_int
from featvis.engine.hooks import device_and_dtype, preserved_modes
from featvis.quality.metrics import Preprocess, check_images, check_labels

#: A real image this close (cosine distance) to a visualisation counts as its copy and is skipped as its neighbour
#: (see :func:`plausibility_from_features`).
DUPLICATE_DISTANCE = 1e-5


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
    images = check_images(images)
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
    groups = check_labels(groups, features.shape[0], "groups")
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


def confidence_frontier(
    features: Tensor,
    target_probs: Tensor,
    labels: Tensor | Sequence[int],
    per_class: Sequence[int] = (4, 10, 50, 100, 300),
) -> list[dict[str, float]]:
    """How diverse the real images are that a model is as sure of as it is of a visualisation.

    For each ``k`` in ``per_class``: the ``k`` images of every class with the highest probability of their own
    class, their mean and lowest probability, and their :func:`feature_diversity` relative to that of every image
    given. Pictures that a reader gives a target probability ``p`` and a diversity above this curve at ``p`` are
    more diverse than the reader's own surest photographs.

    Args:
        features: ``(N, D)`` features of real images, e.g. :func:`penultimate_features` of the reader.
        target_probs: ``(N,)`` the reader's probability of each image's own class.
        labels: ``(N,)`` the class of each image.
        per_class: the ``k`` values, each at least 2 and at most the smallest class's size.

    Returns:
        One row per ``k``: ``per_class``, ``mean_target_prob``, ``min_target_prob`` and ``diversity_vs_real``.
    """
    features = _check_features(features, "features")
    labels = check_labels(labels, features.shape[0], "labels")
    target_probs = target_probs.detach().cpu().flatten()
    if target_probs.shape[0] != features.shape[0]:
        raise ValueError(
            f"target_probs has {target_probs.shape[0]} values for {features.shape[0]} images; pass one each."
        )
    classes = torch.unique(labels)
    smallest = int(min((labels == c).sum() for c in classes))
    baseline = feature_diversity(features, labels)
    if baseline <= 1e-12:  # rounding leaves ~1e-16 for identical vectors
        raise ValueError("every class's images have identical features, so no diversity is relative to them.")
    rows = []
    for k in per_class:
        check_int("per_class", k, 2)
        if k > smallest:
            raise ValueError(f"per_class {k} exceeds the smallest class's {smallest} images; lower it.")
        members = [torch.nonzero(labels == c).flatten() for c in classes]
        chosen = torch.cat([idx[target_probs[idx].argsort(descending=True)[:k]] for idx in members])
        probs = target_probs[chosen]
        rows.append(
            {
                "per_class": float(k),
                "mean_target_prob": float(probs.mean()),
                "min_target_prob": float(probs.min()),
                "diversity_vs_real": feature_diversity(features[chosen], labels[chosen]) / baseline,
            }
        )
    return rows


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
    vis_targets = check_labels(vis_targets, vis_features.shape[0], "vis_targets")
    real_labels = check_labels(real_labels, real_features.shape[0], "real_labels")
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
