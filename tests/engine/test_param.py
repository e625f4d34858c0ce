"""Image parameterisations: Fourier scaling, random starts, colour squashing into RGB and model space."""

from __future__ import annotations

import pytest
import torch

from featvis.colour import ColourTransform
from featvis.engine.param import (
    SPECTRA_LIMIT,
    FourierImage,
    PhaseImage,
    PixelImage,
    amplitude_spectra,
    data_scale,
    fourier_frequencies,
    fourier_scale,
    make_image_param,
)
from featvis.engine.squash import ColourSquash


def _colour() -> ColourTransform:
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(64, 1, 8, 8, generator=generator)
    pixels = (base * 0.7 + 0.3 * torch.rand(64, 3, 8, 8, generator=generator)) * 255
    return ColourTransform.from_pixels(pixels.to(torch.uint8))


def test_fourier_scale_is_inverse_frequency_with_floor() -> None:
    scale = fourier_scale(32, 32, decay=1.0)
    assert scale.shape == (32, 17)
    assert scale[0, 0].item() == pytest.approx(32.0)  # DC: 1 / (1/32)
    assert scale[0, 8].item() == pytest.approx(4.0)  # fx = 8/32 = 0.25 cycles per pixel
    assert scale[0, 16].item() == pytest.approx(2.0)  # Nyquist
    assert scale[3, 4].item() == pytest.approx(32.0 / 5.0)  # radius 5/32
    assert scale[0, 1].item() == pytest.approx(32.0)  # f = 1/32 sits on the floor


def test_fourier_scale_decay_and_rectangular_sizes() -> None:
    assert torch.equal(fourier_scale(16, 16, decay=0.0), torch.ones(16, 9))
    squared = fourier_scale(16, 24, decay=2.0)
    assert squared.shape == (16, 13)
    assert torch.allclose(squared, fourier_scale(16, 24, decay=1.0) ** 2)
    assert fourier_frequencies(16, 24)[0, 12].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decay"):
        fourier_scale(8, 8, decay=-1.0)
    with pytest.raises(ValueError, match="height"):
        fourier_scale(0, 8)


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


def test_amplitude_spectra_draw_real_images_without_replacement_and_resize_them() -> None:
    squash = ColourSquash(_colour())
    real = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    spectra = amplitude_spectra(real, squash, 6, (16, 16), torch.Generator().manual_seed(0))
    own = torch.fft.rfft2(squash.to_z(real, SPECTRA_LIMIT), norm="ortho").abs()
    order = [int((own - s).abs().flatten(1).amax(dim=1).argmin()) for s in spectra]
    assert sorted(order) == list(range(6))  # each real image once
    small = amplitude_spectra(real, squash, 10, (8, 8), torch.Generator().manual_seed(0))
    assert small.shape == (10, 3, 8, 5)  # more images than real ones: drawn with replacement, resized
    with pytest.raises(ValueError, match=r"spectra needs real RGB images of shape \(M, 3, H, W\)"):
        amplitude_spectra(real[:, :1], squash, 2, (16, 16))


def test_the_mean_amplitude_spectrum_is_the_average_of_every_images_own_and_shared_by_all() -> None:
    squash = ColourSquash(_colour())
    real = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    real[:3, :, :8] *= 0.3  # two kinds of image, so the mean differs from any one spectrum
    own = torch.fft.rfft2(squash.to_z(real, SPECTRA_LIMIT), norm="ortho").abs()
    spectra = amplitude_spectra(real, squash, 4, (16, 16), torch.Generator().manual_seed(0), mean=True)
    assert spectra.shape == (4, 3, 16, 9)
    for spectrum in spectra:
        assert torch.allclose(spectrum, own.mean(dim=0), atol=1e-6)
    assert (own - spectra[:1]).abs().flatten(1).amax(dim=1).min() > 1e-2  # no single image's spectrum


def _smooth(count: int, size: int, seed: int) -> torch.Tensor:
    """Low-pass colour images in [0, 1]: noise blurred by upsampling a 4x4 grid, with random colour offsets."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    offsets = torch.rand(count, 3, 1, 1, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (0.3 * fine + 0.7 * offsets).clamp(0, 1)


def test_a_data_scale_falls_as_the_images_spectrum_does_at_the_size_of_the_1_over_f_scale() -> None:
    squash = ColourSquash(_colour())
    real = _smooth(8, 16, 0)
    mean = amplitude_spectra(real, squash, 1, (16, 16), mean=True)
    scale = data_scale(mean, (16, 16))
    assert scale.shape == (3, 16, 9)
    one_over_f = fourier_scale(16, 16)
    # The size of the 1/f scale, so the learning rate keeps its meaning.
    assert torch.isclose(scale.square().mean().sqrt(), one_over_f.square().mean().sqrt(), rtol=1e-5)
    freqs = fourier_frequencies(16, 16)
    low, high = (freqs > 0) & (freqs < 0.15), freqs > 0.35
    # Smooth images: their scale falls from low to high frequencies far faster than 1/f.
    falls = scale[:, low].mean(dim=1) / scale[:, high].mean(dim=1)
    assert (falls > 3 * one_over_f[low].mean() / one_over_f[high].mean()).all(), falls
    # The DC term, each image's colour offset, does not set the mean colour's step size: it takes the lowest
    # frequency's value, as 1/f's floor does.
    ring = freqs == freqs[freqs > 0].min()
    assert mean[0, :, 0, 0].min() > 1.5 * mean[0][:, ring].mean(dim=1).max()
    assert torch.allclose(scale[:, 0, 0], scale[:, ring].mean(dim=1))
    with pytest.raises(ValueError, match=r"\(8, 9\)"):
        data_scale(mean, (8, 16))


def test_a_fourier_image_with_a_scale_follows_it_per_channel_and_keeps_it_when_split() -> None:
    scale = torch.rand(3, 8, 5, generator=torch.Generator().manual_seed(1)) + 0.5
    image = FourierImage(4, 8, 8, generator=torch.Generator().manual_seed(2), scale=scale)
    coefficients = torch.view_as_complex(image.parameter.detach())
    assert torch.allclose(image.spectrum().detach(), coefficients * scale)
    halves = image.split([2, 2])
    assert torch.allclose(torch.cat([half.image() for half in halves]), image.image())
    with pytest.raises(ValueError, match=r"scale must be a \(8, 5\) or \(3, 8, 5\) tensor"):
        FourierImage(1, 8, 8, scale=torch.ones(8, 8))
