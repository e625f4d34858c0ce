"""The colour prior's distance from the data's colours (renders with it: tests/engine/test_render.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import correlated_colour

from featvis.colour import ColourTransform, InputConvention
from featvis.engine.colour_prior import ColourPrior
from featvis.quality.metrics import colour_distance


def _data_colours(colour, count: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Pictures whose pixels are drawn from the basis's Gaussian, contrast scaled by ``scale``."""
    z = torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return colour.to_rgb(z.float() * scale).double()


def test_the_distance_is_that_of_the_basis_gaussian_for_shifted_and_greyed_colours() -> None:
    colour = correlated_colour(32, 0.6)
    prior = ColourPrior(colour)
    covariance = (colour.inverse.T @ colour.inverse).double()
    same = _data_colours(colour, 64, 0)
    assert float(prior(same)) < 1e-4  # a sample of the data's own colours: 0 up to sampling error
    # Half the contrast: the Gaussians differ by (1 - 1/2)^2 tr(S); a mean shift of d by |d|^2.
    assert float(prior(_data_colours(colour, 64, 0, scale=0.5))) == pytest.approx(
        0.25 * float(covariance.trace()), rel=0.03
    )
    assert float(prior(same + torch.tensor([0.1, -0.2, 0.0]).view(1, 3, 1, 1))) == pytest.approx(
        0.05, rel=0.03
    )


def test_the_pooled_distance_matches_the_colour_distance_metric_and_has_finite_gradients_when_grey() -> None:
    colour = correlated_colour(32, 0.6)
    prior = ColourPrior(colour)
    real = _data_colours(colour, 200, 1).clamp(0, 1)
    pictures = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.4 + 0.3
    # The metric measures against real images, the prior against the basis that was fitted to them.
    assert float(prior(pictures)) ** 0.5 == pytest.approx(colour_distance(pictures, real), abs=0.02)
    grey = torch.full((4, 3, 8, 8), 0.5, requires_grad=True)
    prior(grey).backward()
    assert grey.grad is not None and torch.isfinite(grey.grad).all()


def test_only_a_basis_with_a_mean_colour_inside_the_unit_cube_describes_the_data() -> None:
    assert ColourPrior.describes_data(correlated_colour(32, 0.6))
    assert ColourPrior.describes_data(
        ColourTransform.from_normalisation([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    )
    assert not ColourPrior.describes_data(ColourTransform.identity())
    assert not ColourPrior.describes_data(InputConvention(max_value=255).space())
