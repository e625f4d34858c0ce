"""featvis.quality.report: score_render computes what its inputs allow, on the right rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featvis.colour import ColourTransform, InputConvention
from featvis.quality import RGBInput, reference_spectrum, score_render


class AlwaysClass(nn.Module):
    """Answers ``label`` whatever the image; a linear head so penultimate features exist."""

    def __init__(self, label: int, classes: int = 3) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, classes)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(nn.functional.one_hot(torch.tensor(label), classes).float() * 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1))


def _render(targets: int = 3, per_target: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(targets, per_target, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_transfer_and_robustness_use_the_class_targets_only() -> None:
    rgb = _render()
    report = score_render(rgb, [0, 1, None], model=AlwaysClass(0), references={"zero": AlwaysClass(0)})
    # Rows 0 and 1 are classes 0 and 1; the channel row (None) is not scored: 2 of 4 class images are class 0.
    assert report.scores["transfer_accuracy"] == pytest.approx(0.5)
    assert report.scores["transfer_accuracy/zero"] == pytest.approx(0.5)
    # Robustness is the softmax probability of the target: ~1 for class 0's images, ~0 for class 1's.
    assert report.scores["robustness"] == pytest.approx(0.5, abs=1e-3)
    only_zero = score_render(rgb[:, :1], [0, None, None], references={"zero": AlwaysClass(0)})
    assert only_zero.scores == {"transfer_accuracy": 1.0, "transfer_accuracy/zero": 1.0}


def _flat(*colours: tuple[float, float, float]) -> torch.Tensor:
    """Flat 8x8 images of the given RGB colours, ``(N, 3, 8, 8)``."""
    return torch.tensor(colours).view(-1, 3, 1, 1).expand(-1, 3, 8, 8).clone()


def test_reference_diversity_in_the_references_features_and_relative_to_real_images() -> None:
    # AlwaysClass's penultimate features are the mean colour. Target 0: two copies (distance 0); target 1: red
    # and green (orthogonal: cosine distance 1). Mean over targets: 0.5.
    rgb = torch.stack([_flat((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), _flat((1, 0, 0), (0, 1, 0))])
    references = {"a": AlwaysClass(0), "b": AlwaysClass(1)}
    report = score_render(rgb, [0, 1], references=references)
    assert report.scores["reference_diversity"] == pytest.approx(0.5)
    assert report.scores["reference_diversity/a"] == pytest.approx(0.5)
    assert "diversity_vs_real" not in report.scores  # no real images to compare with
    # Real images: class 0 red and blue (1), class 1 two greys (0): 0.5, so the renders are as varied as they.
    real = (_flat((1, 0, 0), (0, 0, 1), (0.3, 0.3, 0.3), (0.3, 0.3, 0.3)), torch.tensor([0, 0, 1, 1]))
    relative = score_render(rgb, [0, 1], references=references, real=real, k=1).scores
    assert relative["diversity_vs_real"] == pytest.approx(1.0) and relative[
        "diversity_vs_real/b"
    ] == pytest.approx(1.0)
    # Less varied than the real images when target 1's pair is closer: red and yellow, 45 degrees apart.
    half = torch.stack([rgb[0], _flat((1, 0, 0), (1, 1, 0))])
    cosine = 1 / 2**0.5  # red against yellow: 45 degrees
    expected = (1 - cosine) / 2 / 0.5
    assert score_render(half, [0, 1], references=references, real=real, k=1).scores[
        "diversity_vs_real"
    ] == pytest.approx(expected)
    # A reference without a linear head has no penultimate features: skipped, with the reason.
    headless = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    skipped = score_render(rgb, [None, None], references={"h": headless})
    assert (
        "reference_diversity" not in skipped.scores and "nn.Linear" in skipped.skipped["reference_diversity"]
    )


def test_diversity_is_zero_for_copies_and_skipped_without_a_linear_head() -> None:
    copies = _render(2, 1).expand(2, 3, 3, 16, 16)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert score_render(copies, [0, 1], model=model).scores["diversity"] == pytest.approx(0.0, abs=1e-6)
    assert score_render(_render(), [0, 1, 2], model=model).scores["diversity"] > 0.0
    headless = nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    report = score_render(_render(), [None] * 3, model=headless)
    assert "diversity" not in report.scores and "nn.Linear" in report.skipped["diversity"]


def test_spectral_gap_against_a_precomputed_spectrum() -> None:
    rgb = _render(4, 4)
    same = reference_spectrum(rgb.flatten(0, 1), 16)
    assert score_render(rgb, [None] * 4, spectrum=same).scores["spectral_gap"] == pytest.approx(0.0, abs=1e-6)
    smooth = torch.nn.functional.avg_pool2d(rgb.flatten(0, 1), 3, 1, 1).view_as(rgb)
    assert score_render(smooth, [None] * 4, spectrum=same).scores["spectral_gap"] > 0.1
    uint8 = (rgb.flatten(0, 1) * 255).round().to(torch.uint8)
    assert torch.allclose(reference_spectrum(uint8, 16), same, atol=0.05)


def test_rgb_input_feeds_the_model_its_own_space_without_moving_the_colour() -> None:
    colour = ColourTransform.from_normalisation([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    seen = []
    model = nn.Sequential(nn.Identity())
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    rgb = torch.rand(2, 3, 4, 4)
    RGBInput(model.double(), colour)(rgb)
    assert seen[0].dtype == torch.float32  # no float parameters: computes in float32
    assert torch.allclose(seen[0], colour.to_model(rgb))
    assert RGBInput(nn.Linear(2, 2).double(), colour).dtype == torch.float64
    assert colour.mean.device.type == "cpu" and colour.mean.dtype == torch.float32


def _halve(x: torch.Tensor) -> torch.Tensor:
    return x / 2


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_rgb_input_feeds_a_grayscale_model_the_luma_and_a_callable_space_its_function() -> None:
    seen = []
    model = nn.Sequential(nn.Identity())
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    RGBInput(model, InputConvention(mean=[0.5], std=[0.25], order="L"))(red)
    assert seen[0].shape == (1, 1, 2, 2)
    assert torch.allclose(seen[0], torch.full((1, 1, 2, 2), (0.299 - 0.5) / 0.25), atol=1e-6)
    RGBInput(model, InputConvention(to_model=_halve, to_rgb=_double).space())(red)
    assert torch.equal(seen[1], red / 2)


def test_colour_distance_against_real_colours_or_the_real_images() -> None:
    rgb = _render(2, 2)
    real = rgb.flatten(0, 1).clone()
    report = score_render(rgb, [None, None], real_colours=real)
    assert report.scores == {"colour_distance": pytest.approx(0.0, abs=1e-6)}
    grey = real.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    labels = torch.zeros(len(real), dtype=torch.long)
    far = score_render(rgb, [None, None], real=(grey, labels)).scores["colour_distance"]
    assert far > 0.2  # uniform noise in every channel against grey pixels
