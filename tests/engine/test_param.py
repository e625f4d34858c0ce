"""Image parameterisations: Fourier scaling, random starts, colour squashing into RGB and model space."""

from __future__ import annotations

import pytest
import torch
from helpers import correlated_colour

from featvis.colour import ColourTransform
from featvis.engine.param import FourierImage, PhaseImage, PixelImage, make_image_param
from featvis.engine.squash import ColourSquash


def _colour() -> ColourTransform:
    return correlated_colour(64, 0.7)


def test_fourier_image_amplitudes_follow_the_scale() -> None:
    """A unit coefficient at frequency f gives a wave whose amplitude is proportional to scale(f)."""
    param = torch.zeros(2, 3, 32, 17, 2)
    param[0, :, 0, 2, 0] = 1.0  # 2 cycles per image
    param[1, :, 0, 8, 0] = 1.0  # 8 cycles per image
    image = FourierImage.from_parameter(param, 32, 32, decay=1.0).image()
    amplitude = image.abs().amax(dim=(1, 2, 3))
    assert (amplitude[0] / amplitude[1]).item() == pytest.approx(4.0, rel=1e-4)
    flat = FourierImage.from_parameter(param, 32, 32, decay=0.0).image().abs().amax(dim=(1, 2, 3))
    assert (flat[0] / flat[1]).item() == pytest.approx(1.0, rel=1e-4)


def test_random_start_comes_from_the_generator() -> None:
    first = FourierImage(4, 32, 32, init_std=0.01, generator=torch.Generator().manual_seed(3))
    again = FourierImage(4, 32, 32, init_std=0.01, generator=torch.Generator().manual_seed(3))
    other = FourierImage(4, 32, 32, init_std=0.01, generator=torch.Generator().manual_seed(4))
    assert first.parameter.shape == (4, 3, 32, 17, 2)
    assert torch.equal(first.parameter, again.parameter)
    assert not torch.equal(first.parameter, other.parameter)
    assert first.parameter.std().item() == pytest.approx(0.01, rel=0.05)
    assert first.parameter.requires_grad and first.parameter.is_leaf


def test_split_makes_independent_leaves_with_the_same_values() -> None:
    image = make_image_param("pixel", 6, 8, 8, generator=torch.Generator().manual_seed(0))
    assert isinstance(image, PixelImage)
    parts = image.split([2, 4])
    assert [len(part) for part in parts] == [2, 4]
    assert torch.equal(torch.cat([p.parameter for p in parts]), image.parameter)
    assert all(p.parameter.is_leaf and p.parameter.requires_grad for p in parts)
    assert parts[0].parameter.data_ptr() != image.parameter.data_ptr()
    with pytest.raises(ValueError, match="parameterisation"):
        make_image_param("wavelet", 1, 8, 8)  # type: ignore[arg-type]


def test_colour_squash_keeps_rgb_in_range_and_matches_the_colour_transform() -> None:
    colour = _colour()
    squash = ColourSquash(colour, decorrelate=True)
    z = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 50
    rgb = squash.to_rgb(z)
    assert rgb.min().item() >= 0.0 and rgb.max().item() <= 1.0
    assert torch.allclose(squash.to_model(rgb), colour.to_model(rgb), atol=1e-5)


def test_decorrelated_parameter_is_model_space_to_first_order() -> None:
    colour = _colour()
    squash = ColourSquash(colour, decorrelate=True)
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 1e-3
    assert torch.allclose(squash.to_model(squash.to_rgb(z)), z, atol=1e-6, rtol=1e-2)
    zero = squash.to_rgb(torch.zeros(1, 3, 1, 1)).flatten()
    assert torch.allclose(zero, colour.mean, atol=1e-6)  # the start is the data's mean colour


def test_without_decorrelation_channels_do_not_mix() -> None:
    squash = ColourSquash(_colour(), decorrelate=False)
    off_diagonal = squash.correlation - torch.diag(squash.correlation.diagonal())
    assert torch.count_nonzero(off_diagonal).item() == 0
    red_only = torch.zeros(1, 3, 2, 2)
    red_only[:, 0] = 0.5
    moved = squash.to_rgb(red_only) - squash.to_rgb(torch.zeros(1, 3, 2, 2))
    assert moved[:, 0].abs().min().item() > 0 and moved[:, 1:].abs().max().item() == 0


def test_colour_squash_optimises_in_the_basis_and_feeds_the_model_its_own_space() -> None:
    normalisation = ColourTransform.from_normalisation([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    basis = _colour()
    squash = ColourSquash(normalisation, decorrelate=True, basis=basis)
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 1e-3
    rgb = squash.to_rgb(z)
    assert torch.allclose(basis.to_model(rgb), z, atol=1e-6, rtol=1e-2)  # z is in the basis to first order
    assert torch.equal(squash.to_model(rgb), normalisation.to_model(rgb))  # the model gets its own space
    zero = squash.to_rgb(torch.zeros(1, 3, 1, 1)).flatten()
    assert torch.allclose(zero, basis.mean, atol=1e-6)  # the start is the basis's mean colour
    assert not torch.allclose(zero, normalisation.mean, atol=1e-3)
    # Without a basis, or with the colour transform itself as basis: the same tensors, bit for bit.
    plain, same = ColourSquash(normalisation), ColourSquash(normalisation, basis=normalisation)
    assert torch.equal(plain.correlation, same.correlation) and torch.equal(plain.offset, same.offset)
    assert not torch.allclose(plain.correlation, squash.correlation)


def test_one_channel_parameterisations_and_squash() -> None:
    generator = torch.Generator().manual_seed(0)
    fourier = make_image_param("fourier", 3, 8, 12, generator=generator, channels=1)
    pixel = make_image_param("pixel", 3, 8, 12, generator=generator, channels=1)
    assert fourier.image().shape == pixel.image().shape == (3, 1, 8, 12)
    assert [part.image().shape[1] for part in fourier.split([1, 2])] == [1, 1]
    grey = ColourTransform.from_normalisation([0.3], [0.2])
    squash = ColourSquash(grey)
    assert squash.correlation.shape == (1, 1)
    assert torch.allclose(squash.to_rgb(torch.zeros(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.3), atol=1e-6)
    z = torch.randn(2, 1, 4, 4, generator=generator) * 1e-3
    assert torch.allclose(squash.to_model(squash.to_rgb(z)), z, atol=1e-6, rtol=1e-2)
    with pytest.raises(ValueError, match=r"the colour basis has 3 channel\(s\) but the input space 1"):
        ColourSquash(grey, basis=_colour())
    with pytest.raises(ValueError, match="channels must be 3 \\(RGB\\) or 1 \\(grey\\), got 2"):
        make_image_param("pixel", 1, 4, 4, channels=2)


def test_to_z_inverts_the_colour_squash_so_a_real_images_spectrum_and_phase_give_it_back() -> None:
    colour = _colour()
    for decorrelate in (True, False):
        squash = ColourSquash(colour, decorrelate=decorrelate)
        real = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 0.9 + 0.05
        assert torch.allclose(squash.to_rgb(squash.to_z(real)), real, atol=1e-5)
        spectrum = torch.fft.rfft2(squash.to_z(real), norm="ortho")
        # A phase parameter pointing along the real image's own phase rebuilds it from its magnitude.
        phase = torch.view_as_real(spectrum * 7.0).clone().requires_grad_(True)
        image = PhaseImage.from_phase(phase, spectrum.abs(), 8, 8)
        assert torch.allclose(squash.to_rgb(image.image()), real, atol=1e-4)


def test_phase_image_keeps_its_magnitude_whatever_the_parameter() -> None:
    magnitude = torch.rand(4, 3, 8, 5, generator=torch.Generator().manual_seed(5)) + 0.1
    image = PhaseImage(magnitude, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        image.parameter.mul_(torch.rand(image.parameter.shape[:-1]).unsqueeze(-1) * 100)
    assert torch.allclose(image.spectrum().abs(), magnitude, atol=1e-5)
    halves = image.split([1, 3])
    assert [tuple(part.magnitude.shape) for part in halves] == [(1, 3, 8, 5), (3, 3, 8, 5)]
    assert torch.equal(torch.cat([part.image() for part in halves]), image.image())
    with pytest.raises(ValueError, match=r"magnitude has spectra of shape \(8, 5\), but 16x16 images have"):
        PhaseImage(magnitude, 16, 16)


def test_a_fourier_image_with_a_scale_follows_it_per_channel_and_keeps_it_when_split() -> None:
    scale = torch.rand(3, 8, 5, generator=torch.Generator().manual_seed(1)) + 0.5
    image = FourierImage(4, 8, 8, generator=torch.Generator().manual_seed(2), scale=scale)
    coefficients = torch.view_as_complex(image.parameter.detach())
    assert torch.allclose(image.spectrum().detach(), coefficients * scale)
    halves = image.split([2, 2])
    assert torch.allclose(torch.cat([half.image() for half in halves]), image.image())
    with pytest.raises(ValueError, match=r"scale must be a \(8, 5\) or \(3, 8, 5\) tensor"):
        FourierImage(1, 8, 8, scale=torch.ones(8, 8))


def test_encode_gives_the_parameters_of_an_image_and_a_phase_image_takes_its_phases() -> None:
    z = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(10))
    scale = torch.rand(3, 8, 5, generator=torch.Generator().manual_seed(11)) + 0.5
    for image in (PixelImage(3, 8, 8), FourierImage(3, 8, 8, decay=1.25), FourierImage(3, 8, 8, scale=scale)):
        with torch.no_grad():
            image.parameter.copy_(image.encode(z))
        assert torch.allclose(image.image(), z, atol=1e-5), type(image).__name__
    magnitude = torch.rand(3, 3, 8, 5, generator=torch.Generator().manual_seed(12)) + 0.1
    phase = PhaseImage(magnitude, 8, 8, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        phase.parameter.copy_(phase.encode(z))
    spectrum, target = phase.spectrum(), torch.fft.rfft2(z, norm="ortho")
    assert torch.allclose(spectrum.abs(), magnitude, atol=1e-5)  # its own amplitudes
    assert torch.allclose(spectrum / spectrum.abs(), target / target.abs(), atol=1e-4)  # z's phases
