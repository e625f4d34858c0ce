"""Feature-space quality metrics: penultimate features, diversity and plausibility, on inputs with known values."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import noise_images, smooth_images
from torch import nn

from featvis.networks import SpeedNet
from featvis.quality.features import (
    confidence_frontier,
    feature_diversity,
    penultimate_features,
    plausibility,
    plausibility_from_features,
)

# ------------------------------------------------------------------------------------ feature diversity


def test_feature_diversity_known_values():
    same = torch.tensor([[1.0, 2.0, 3.0]] * 4)
    assert feature_diversity(same, [0, 0, 0, 0]) == pytest.approx(0.0, abs=1e-12)
    orthogonal = torch.eye(4)
    assert feature_diversity(orthogonal, [0, 0, 0, 0]) == pytest.approx(1.0)
    # Group 0: identical (0); group 1: opposite vectors (distance 2); singleton group 2 is skipped.
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, -1.0], [5.0, 5.0]])
    assert feature_diversity(features, [0, 0, 1, 1, 2]) == pytest.approx(1.0)
    # Three vectors at 120 degrees: every pair has cosine -1/2, distance 1.5.
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    plane = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert feature_diversity(plane, [7, 7, 7]) == pytest.approx(1.5)


def test_feature_diversity_needs_pairs():
    with pytest.raises(ValueError, match="two or more"):
        feature_diversity(torch.eye(3), [0, 1, 2])
    with pytest.raises(ValueError, match="one label per image"):
        feature_diversity(torch.eye(3), [0, 0])


# ----------------------------------------------------------------------------------- penultimate features


def test_penultimate_features_hook_matches_manual_forward_and_features_method():
    model = SpeedNet(widths=(8, 16, 16)).train()
    images = noise_images(5, 0)
    features = penultimate_features(model, images, batch_size=2)
    model.eval()
    with torch.no_grad():
        manual = model.flatten(model.pool(model.group3(model.group2(model.group1(model.stem(images))))))
    assert features.shape == (5, 16)
    assert torch.allclose(features, manual, atol=1e-5)
    model.train()
    penultimate_features(model, images)
    assert model.training and model.group1.conv1.bn.training  # train mode restored

    class WithFeatures(nn.Module):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    assert torch.allclose(penultimate_features(WithFeatures(), images), images.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="no nn.Linear"):
        penultimate_features(nn.Conv2d(3, 3, 1), images)


def test_penultimate_features_applies_preprocess():
    class Identity(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.mean(dim=(2, 3)))

    images = noise_images(3, 0)
    shifted = penultimate_features(Identity(), images, preprocess=lambda x: x - 0.5)
    assert torch.allclose(shifted, images.mean(dim=(2, 3)) - 0.5, atol=1e-6)


# ----------------------------------------------------------------------------------------- plausibility


def _clustered_features(per_class: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 16, generator=generator) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(labels.shape[0], 16, generator=generator), labels


def test_plausibility_of_real_against_itself_is_one():
    features, labels = _clustered_features(30, 3, 0)
    assert plausibility_from_features(features, labels, features, labels, k=5) == pytest.approx(1.0)


def test_plausibility_known_ratio_on_a_circle():
    # Real images of one class: 12 unit vectors evenly spaced on a circle, so each real image's 2 nearest
    # other images are at +-30 degrees. A visualisation along a real image's direction (scaled) has as
    # nearest non-identical neighbours the two at +-30 degrees too: ratio 1. An orthogonal one, out of the
    # plane, is at 90 degrees from every real image: ratio (1 - cos 90) / (1 - cos 30).
    angles = torch.arange(12) * (2 * math.pi / 12)
    real = torch.stack([angles.cos(), angles.sin(), torch.zeros(12)], dim=1)
    labels = torch.zeros(12, dtype=torch.long)
    near = plausibility_from_features(real[:1] * 3, [0], real, labels, k=2)
    assert near == pytest.approx(1.0)
    far = plausibility_from_features(torch.tensor([[0.0, 0.0, 1.0]]), [0], real, labels, k=2)
    assert far == pytest.approx(1.0 / (1 - math.cos(math.pi / 6)))


def test_plausibility_weights_classes_by_visualisation_count():
    angles = torch.arange(12) * (2 * math.pi / 12)
    ring = torch.stack([angles.cos(), angles.sin(), torch.zeros(12), torch.zeros(12)], dim=1)
    real = torch.cat([ring, ring[:, [2, 3, 0, 1]]])  # class 1: the same ring in the other two dimensions
    labels = torch.tensor([0] * 12 + [1] * 12)
    # Class 0 visualisation: orthogonal to ring 0 (distance 1); class 1: on ring 1 (the baseline distance).
    vis = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    base = 1 - math.cos(math.pi / 6)
    value = plausibility_from_features(vis, [0, 1], real, labels, k=2)
    assert value == pytest.approx((1.0 + base) / (2 * base))


def test_plausibility_with_model_real_vs_itself_is_one_and_noise_is_higher():
    model = SpeedNet(widths=(8, 16, 16))
    real = smooth_images(40, 0)
    labels = torch.arange(2).repeat(20)
    assert plausibility(model, real, labels, real, labels, k=3) == pytest.approx(1.0, abs=1e-6)
    assert plausibility(model, noise_images(6, 1), [0, 1] * 3, real, labels, k=3) > 1.0


def test_plausibility_rejects_too_few_real_images_and_mismatched_features():
    features, labels = _clustered_features(4, 2, 0)
    with pytest.raises(ValueError, match="k=10"):
        plausibility_from_features(features, labels, features, labels, k=10)
    with pytest.raises(ValueError, match="dimensions"):
        plausibility_from_features(features[:, :3], labels, features, labels, k=2)


# ------------------------------------------------------------------------------------ confidence frontier


def test_confidence_frontier_takes_each_class_surest_images():
    # Class 0: the two surest images share one direction, the two least sure point elsewhere; class 1 likewise.
    features = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] * 2)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    probs = torch.tensor([0.9, 0.8, 0.3, 0.2, 0.95, 0.7, 0.4, 0.1])
    two, four = confidence_frontier(features, probs, labels, per_class=(2, 4))
    assert two["per_class"] == 2 and four["per_class"] == 4
    assert two["mean_target_prob"] == pytest.approx((0.9 + 0.8 + 0.95 + 0.7) / 4)
    assert two["min_target_prob"] == pytest.approx(0.7)
    assert two["diversity_vs_real"] == pytest.approx(0.0, abs=1e-12)  # the surest pairs are parallel
    assert four["diversity_vs_real"] == pytest.approx(1.0)  # every image of every class
    # Reversing the probabilities picks the orthogonal pairs: distance 1 against the class's mean 5/6.
    (flipped,) = confidence_frontier(features, 1 - probs, labels, per_class=(2,))
    assert flipped["diversity_vs_real"] == pytest.approx(1.0 / (5 / 6))
    assert flipped["min_target_prob"] == pytest.approx(0.6)


def test_confidence_frontier_rejects_bad_input():
    features, labels = torch.eye(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="per_class 3 exceeds"):
        confidence_frontier(features, torch.ones(4), labels, per_class=(3,))
    with pytest.raises(ValueError, match="target_probs has 3 values"):
        confidence_frontier(features, torch.ones(3), labels)
    with pytest.raises(ValueError, match="identical features"):
        confidence_frontier(torch.ones(4, 2), torch.ones(4), labels, per_class=(2,))
