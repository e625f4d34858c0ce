"""Quality metrics of visualisations, on constructed inputs whose right values are known."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import noise_images, smooth_images
from torch import nn

from featvis.networks import SpeedNet
from featvis.quality.metrics import (
    TransferAccuracy,
    colour_distance,
    radial_log_spectrum,
    random_affine,
    robustness,
    spectral_gap,
    transfer_accuracy,
)


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
    noise = radial_log_spectrum(noise_images(256, 0))
    assert noise.shape == (16,)
    # Orthonormal FFT of i.i.d. pixels: E|F|^2 = variance of the grey image (uniform/3 channels: 1/36).
    # E[ln |F|] for a complex Gaussian amplitude is ln(sigma) - gamma/2 (the Rayleigh log-mean).
    expected = 0.5 * math.log(1 / 36) - 0.5772 / 2
    # Radius 1 holds only 4 coefficients per image, so its sampling error is the largest (about 0.02).
    assert torch.allclose(noise, torch.full((16,), expected), atol=0.08)
    smooth = radial_log_spectrum(smooth_images(64, 1))
    assert smooth[0] > smooth[7] > smooth[15]


def test_spectral_gap_is_zero_for_identical_sets_and_symmetric():
    images = smooth_images(8, 0)
    assert spectral_gap(images, images.clone()) == 0.0
    other = noise_images(8, 1)
    assert spectral_gap(images, other) == pytest.approx(spectral_gap(other, images))


def test_spectral_gap_noise_vs_smooth_is_large_with_known_sign():
    smooth, noise = smooth_images(32, 0), noise_images(32, 1)
    difference = radial_log_spectrum(noise) - radial_log_spectrum(smooth)
    # Noise carries more energy than smooth images at every radius above the coarse grid's band.
    assert bool((difference[8:] > 2).all())
    gap = spectral_gap(noise, smooth)
    assert gap == pytest.approx(float(difference.abs().mean()))
    assert gap > 2.0
    # Two independent noise sets are close (sampling error only).
    assert spectral_gap(noise_images(256, 2), noise_images(256, 3)) < 0.03


def test_spectral_gap_ignores_brightness_offsets():
    images = smooth_images(8, 0) * 0.5
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
        spectral_gap(images, noise_images(2, 0))


def test_spectral_gap_rejects_size_mismatch_and_bad_radius():
    with pytest.raises(ValueError, match="same size"):
        spectral_gap(noise_images(2, 0), torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="Nyquist"):
        radial_log_spectrum(torch.rand(2, 3, 16, 16), max_radius=16)


# ------------------------------------------------------------------------------------------- robustness


def test_robustness_of_constant_classifier_is_its_confidence_for_its_class():
    model = ConstantClassifier(c=3, confidence=0.9)
    images = noise_images(6, 0)
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
    images, targets = noise_images(4, 0), [0, 1, 2, 3]
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
    images = smooth_images(4, 0)
    generator = torch.Generator().manual_seed(0)
    moved = random_affine(images, generator)
    assert moved.shape == images.shape and float(moved.min()) >= 0 and float(moved.max()) <= 1
    assert not torch.allclose(moved, images, atol=1e-3)
    still = random_affine(images, generator, max_shift=0, scale_range=(1, 1), max_degrees=0)
    assert torch.allclose(still, images, atol=1e-5)


def test_robustness_rejects_bad_targets():
    with pytest.raises(ValueError, match="one label per image"):
        robustness(ConstantClassifier(0), noise_images(3, 0), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        robustness(ConstantClassifier(0), noise_images(2, 0), [0, 10])


# ------------------------------------------------------------------------------------ transfer accuracy


def test_transfer_accuracy_of_constant_classifiers():
    targets = torch.tensor([2, 2, 5, 1, 2, 0, 5, 5])
    images = noise_images(8, 0)
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
    transfer_accuracy(model, noise_images(2, 0), [0, 0])
    assert model.training and model.bn.training


def test_transfer_accuracy_rejects_bad_models():
    with pytest.raises(ValueError, match="nn.Module"):
        transfer_accuracy([], noise_images(2, 0), [0, 0])


# ----------------------------------------------------------------------------------------- colour distance


def _photo_like(count: int, seed: int) -> torch.Tensor:
    """Images with photo-like colours: a smooth shared brightness, a mild per-image tint and a little noise."""
    generator = torch.Generator().manual_seed(seed)
    light = nn.functional.interpolate(
        torch.rand(count, 1, 4, 4, generator=generator), size=16, mode="bilinear"
    )
    tint = 0.08 * torch.randn(count, 3, 1, 1, generator=generator)
    return (0.15 + 0.7 * light + tint + 0.03 * torch.randn(count, 3, 16, 16, generator=generator)).clamp(0, 1)


def test_colour_distance_is_zero_for_the_same_colours_and_grows_with_recolouring():
    real, other = _photo_like(128, 0), _photo_like(128, 1)
    assert colour_distance(real, real.clone()) == pytest.approx(0.0, abs=1e-6)
    assert colour_distance(real, real[:, :, ::2, ::2]) < 0.01  # sizes may differ
    baseline = colour_distance(other, real)  # another sample of the same distribution
    assert baseline < 0.025  # measured: 0.020
    grey = real.mean(dim=1, keepdim=True)
    saturated = (grey + 4 * (real - grey)).clamp(0, 1)
    psychedelic = 1 - saturated[:, [1, 2, 0]]
    as_grey = grey.expand(-1, 3, -1, -1)
    distances = {
        "saturated": colour_distance(saturated, real),
        "psychedelic": colour_distance(psychedelic, real),
        "grey": colour_distance(as_grey, other),
    }
    # Measured: saturated 0.30, psychedelic 0.30, grey 0.12; every recolouring lies far above the baseline.
    assert distances["saturated"] > 10 * baseline and distances["psychedelic"] > 10 * baseline, distances
    assert distances["grey"] > 5 * baseline, distances
    assert colour_distance(real, saturated) == pytest.approx(distances["saturated"], rel=1e-6)  # symmetric
    uint8 = (real * 255).round().to(torch.uint8)
    assert colour_distance(other, uint8) == pytest.approx(baseline, abs=2e-3)


def test_colour_distance_of_constant_colours_is_their_euclidean_distance():
    red, blue = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    assert colour_distance(red, blue) == pytest.approx(math.sqrt(2), abs=1e-6)
    with pytest.raises(ValueError, match=r"real must be RGB in \[0, 1\]"):
        colour_distance(red, red * 2)
