"""The spectral prior: the 1/f scale, real images' amplitude spectra and the data's mean-spectrum scale."""

from __future__ import annotations

import pytest
import torch
from helpers import correlated_colour

from featvis.colour import ColourTransform
from featvis.engine.spectrum import (
    LAYOUT_CYCLES,
    SPECTRA_LIMIT,
    amplitude_spectra,
    data_scale,
    fourier_frequencies,
    fourier_scale,
    layout_images,
)
from featvis.engine.squash import ColourSquash


def _colour() -> ColourTransform:
    return correlated_colour(64, 0.7)


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


def test_layouts_keep_the_lowest_frequencies_of_real_images_each_drawn_once() -> None:
    squash = ColourSquash(_colour())
    real = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    layouts = layout_images(real, squash, 5, (16, 16), torch.Generator().manual_seed(0))
    assert layouts.shape == (5, 3, 16, 16)
    spectra = torch.fft.rfft2(layouts, norm="ortho")
    cycles = fourier_frequencies(16, 16) * 16  # per image, on a square image
    low = cycles <= LAYOUT_CYCLES
    assert 1 < int(low.sum()) < 16 and spectra[..., ~low].abs().max() < 1e-5  # nothing finer than the layout
    own = torch.fft.rfft2(squash.to_z(real, SPECTRA_LIMIT), norm="ortho")[..., low]
    order = [int((own - layout[..., low]).abs().flatten(1).amax(dim=1).argmin()) for layout in spectra]
    assert sorted(order) == list(range(5))  # each real image once
    assert torch.allclose(spectra[..., low], own[order], atol=1e-4)  # and its low frequencies as they are
    # No cycles: the mean colour alone, one flat colour per picture, different between pictures.
    flat = layout_images(real, squash, 5, (16, 16), torch.Generator().manual_seed(0), cycles=0.0)
    assert torch.allclose(flat, flat.mean(dim=(2, 3), keepdim=True), atol=1e-5)
    assert flat.mean(dim=(2, 3)).std(dim=0).min() > 0.01
