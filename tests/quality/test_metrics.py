"""Quality metrics of visualisations, on constructed inputs whose right values are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from featvis.model import SpeedNet
from featvis.quality.metrics import (
    TransferAccuracy,
    feature_diversity,
    penultimate_features,
    plausibility,
    plausibility_from_features,
    radial_log_spectrum,
    random_affine,
    robustness,
    spectral_gap,
    transfer_accuracy,
)


def _smooth_images(count: int, seed: int) -> torch.Tensor:
    """Low-frequency images: random 4x4 colour fields upsampled bilinearly to 32x32."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    return nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False).clamp(0, 1)


def _noise(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class ConstantClassifier(nn.Module):
    """Always predicts class ``c`` (with probability ``p``); counts forward calls and keeps BatchNorm/Linear."""

    def __init__(self, c: int, classes: int = 10, confidence: float = 0.9) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, classes)
        self.c, self.classes, self.confidence = c, classes, confidence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.bn(x).mean(dim=(2, 3))
        self.head(features)  # runs the final linear so feature hooks fire
        rest = (1 - self.confidence) / (self.classes - 1)
        probs = torch.full((x.shape[0], self.classes), rest)
        probs[:, self.c] = self.confidence
        return probs.log()


# ----------------------------------------------------------------------------------------- spectrum / gap


def test_radial_log_spectrum_of_white_noise_is_flat_and_of_smooth_images_falls():
    noise = radial_log_spectrum(_noise(256, 0))
    assert noise.shape == (16,)
    # Orthonormal FFT of i.i.d. pixels: E|F|^2 = variance of the grey image (uniform/3 channels: 1/36).
    # E[ln |F|] for a complex Gaussian amplitude is ln(sigma) - gamma/2 (the Rayleigh log-mean).
    expected = 0.5 * math.log(1 / 36) - 0.5772 / 2
    # Radius 1 holds only 4 coefficients per image, so its sampling error is the largest (about 0.02).
    assert torch.allclose(noise, torch.full((16,), expected), atol=0.08)
    smooth = radial_log_spectrum(_smooth_images(64, 1))
    assert smooth[0] > smooth[7] > smooth[15]


def test_spectral_gap_is_zero_for_identical_sets_and_symmetric():
    images = _smooth_images(8, 0)
    assert spectral_gap(images, images.clone()) == 0.0
    other = _noise(8, 1)
    assert spectral_gap(images, other) == pytest.approx(spectral_gap(other, images))


def test_spectral_gap_noise_vs_smooth_is_large_with_known_sign():
    smooth, noise = _smooth_images(32, 0), _noise(32, 1)
    difference = radial_log_spectrum(noise) - radial_log_spectrum(smooth)
    # Noise carries more energy than smooth images at every radius above the coarse grid's band.
    assert bool((difference[8:] > 2).all())
    gap = spectral_gap(noise, smooth)
    assert gap == pytest.approx(float(difference.abs().mean()))
    assert gap > 2.0
    # Two independent noise sets are close (sampling error only).
    assert spectral_gap(_noise(256, 2), _noise(256, 3)) < 0.03


def test_spectral_gap_ignores_brightness_offsets():
    images = _smooth_images(8, 0) * 0.5
    assert spectral_gap(images, images + 0.25) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(3, 32, 32), "shape"),
        (torch.rand(2, 1, 32, 32), "shape"),
        (torch.rand(2, 3, 32, 32) * 2, r"\[0, 1\]"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.full((2, 3, 32, 32), math.nan), "NaN"),
    ],
)
def test_spectral_gap_rejects_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        spectral_gap(images, _noise(2, 0))


def test_spectral_gap_rejects_size_mismatch_and_bad_radius():
    with pytest.raises(ValueError, match="same size"):
        spectral_gap(_noise(2, 0), torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="Nyquist"):
        radial_log_spectrum(torch.rand(2, 3, 16, 16), max_radius=16)


# ------------------------------------------------------------------------------------------- robustness


def test_robustness_of_constant_classifier_is_its_confidence_for_its_class():
    model = ConstantClassifier(c=3, confidence=0.9)
    images = _noise(6, 0)
    assert robustness(model, images, [3] * 6, repeats=2) == pytest.approx(0.9, abs=1e-6)
    assert robustness(model, images, [0, 3, 3, 0, 0, 0], repeats=2) == pytest.approx(
        (2 * 0.9 + 4 * 0.1 / 9) / 6, abs=1e-6
    )


def test_robustness_restores_modes_uses_no_global_rng_and_is_deterministic():
    model = SpeedNet(widths=(8, 16, 16))
    model.train()
    model.group1.eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    stats = model.group2.conv1.bn.running_mean.clone()
    images, targets = _noise(4, 0), [0, 1, 2, 3]
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    first = robustness(model, images, targets, repeats=3, seed=5)
    assert torch.rand(1) == expected_next  # the global RNG was not advanced
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(model.group2.conv1.bn.running_mean, stats)
    assert robustness(model, images, targets, repeats=3, seed=5) == first
    assert 0.0 < first < 1.0


def test_robustness_falls_when_prediction_depends_on_exact_alignment():
    class PixelDetector(nn.Module):
        """Class 1 iff the top-left pixel is bright: any shift, zoom or rotation moves it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bright = (x[:, 0, 0, 0] > 0.99).float() * 20
            return torch.stack([torch.zeros_like(bright), bright - 10], dim=1)

    images = torch.zeros(8, 3, 32, 32)
    images[:, :, 0, 0] = 1.0
    unmoved = robustness(PixelDetector(), images, [1] * 8, transform=lambda x, g: x)
    assert unmoved == pytest.approx(1.0, abs=1e-4)
    assert robustness(PixelDetector(), images, [1] * 8) < 0.5


def test_random_affine_keeps_shape_and_range_and_identity_at_zero_magnitude():
    images = _smooth_images(4, 0)
    generator = torch.Generator().manual_seed(0)
    moved = random_affine(images, generator)
    assert moved.shape == images.shape and float(moved.min()) >= 0 and float(moved.max()) <= 1
    assert not torch.allclose(moved, images, atol=1e-3)
    still = random_affine(images, generator, max_shift=0, scale_range=(1, 1), max_degrees=0)
    assert torch.allclose(still, images, atol=1e-5)


def test_robustness_rejects_bad_targets():
    with pytest.raises(ValueError, match="one label per image"):
        robustness(ConstantClassifier(0), _noise(3, 0), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        robustness(ConstantClassifier(0), _noise(2, 0), [0, 10])


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


# ------------------------------------------------------------------------------------ transfer accuracy


def test_transfer_accuracy_of_constant_classifiers():
    targets = torch.tensor([2, 2, 5, 1, 2, 0, 5, 5])
    images = _noise(8, 0)
    result = transfer_accuracy(ConstantClassifier(2), images, targets)
    assert isinstance(result, TransferAccuracy)
    assert result.per_model == (3 / 8,)
    assert float(result) == pytest.approx(3 / 8)
    both = transfer_accuracy([ConstantClassifier(2), ConstantClassifier(5)], images, targets, batch_size=3)
    assert both.per_model == (3 / 8, 3 / 8)
    none = transfer_accuracy([ConstantClassifier(2), ConstantClassifier(9)], images, targets)
    assert none.per_model == (3 / 8, 0.0) and none.mean == pytest.approx(3 / 16)


def test_transfer_accuracy_restores_train_mode():
    model = ConstantClassifier(0).train()
    transfer_accuracy(model, _noise(2, 0), [0, 0])
    assert model.training and model.bn.training


def test_transfer_accuracy_rejects_bad_models():
    with pytest.raises(ValueError, match="nn.Module"):
        transfer_accuracy([], _noise(2, 0), [0, 0])


# ----------------------------------------------------------------------------------- penultimate features


def test_penultimate_features_hook_matches_manual_forward_and_features_method():
    model = SpeedNet(widths=(8, 16, 16)).train()
    images = _noise(5, 0)
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

    images = _noise(3, 0)
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
    real = _smooth_images(40, 0)
    labels = torch.arange(2).repeat(20)
    assert plausibility(model, real, labels, real, labels, k=3) == pytest.approx(1.0, abs=1e-6)
    assert plausibility(model, _noise(6, 1), [0, 1] * 3, real, labels, k=3) > 1.0


def test_plausibility_rejects_too_few_real_images_and_mismatched_features():
    features, labels = _clustered_features(4, 2, 0)
    with pytest.raises(ValueError, match="k=10"):
        plausibility_from_features(features, labels, features, labels, k=10)
    with pytest.raises(ValueError, match="dimensions"):
        plausibility_from_features(features[:, :3], labels, features, labels, k=2)
