"""The spectral prior: the per-frequency scale of a Fourier image, and real images' amplitude spectra.

A Fourier image's scale is a preconditioner. Adam moves every spectral coefficient by about the learning rate,
so the scale decides how fast each frequency of each colour direction may change: :func:`fourier_scale` is the
``1 / f ** decay`` guess at natural images' fall-off, :func:`data_scale` the data's own mean spectrum. A
phase-only image (:class:`~featvis.engine.param.PhaseImage`) fixes the amplitudes to real images' spectra
(:func:`amplitude_spectra`) and optimises only the phase. :func:`layout_images` gives real images' coarse
layouts, part of a render's start with ``init_layout``. The image parameterisations themselves live in :mod:`featvis.engine.param`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from featvis.engine.checks import check_int, check_number
from featvis.engine.squash import ColourSquash

FourierScale = Literal["1/f", "data"]
FOURIER_SCALES: tuple[str, ...] = get_args(FourierScale)

#: Colours are limited to [SPECTRA_LIMIT, 1 - SPECTRA_LIMIT] before their spectra are taken for a phase-only
#: render. Near-black and near-white pixels have huge logits; a real image's saturated highlights put that
#: energy at its edges, but with the phases free it becomes high-frequency noise all over the picture. Measured on
#: the default model after 2 epochs, 10 classes x 4 against real test images (colour distance, spectral gap;
#: `python -m benchmarks.colour`): half an 8-bit level 0.046, 0.291; 0.05: 0.089, 0.131; 0.1: 0.111, 0.095;
#: featvis's 1/f default 0.197, 0.331. 0.05 keeps both well inside the quality bars (0.10 and 0.30).
SPECTRA_LIMIT = 0.05


#: A layout start (:func:`layout_images`) keeps a real image's frequencies up to 2.25 cycles per image: its mean
#: colour and colour regions of about a quarter of the picture and larger. Measured on two 2-epoch SpeedNets of
#: the default recipe, each read by the other (benchmarks/README.md, "A start from the data's layouts"): at 2.25
#: the colour distance to real images falls from 0.13 to 0.06 at the same target probability and spectral gap;
#: the mean colour alone (0) reaches 0.108 and loses 0.015 of target probability; 4.8 and 9.6 cycles reach 0.059
#: and 0.051 but widen the spectral gap from 0.32 to 0.36 and 0.42.
LAYOUT_CYCLES = 2.25


def fourier_frequencies(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """Radial frequency, in cycles per pixel, of each entry of an ``rfft2`` spectrum of an image.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        device: device of the returned tensor.

    Returns:
        A ``(height, width // 2 + 1)`` float32 tensor.
    """
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    return torch.sqrt(fy * fy + fx * fx)


def fourier_scale(
    height: int, width: int, decay: float = 1.0, device: torch.device | str | None = None
) -> Tensor:
    """Per-frequency scale ``1 / max(f, 1 / size) ** decay`` of a Fourier image (``size = max(height, width)``).

    Multiplying a white spectrum by it gives the ``1 / f ** decay`` amplitude spectrum of natural images; the
    floor at ``1 / size`` keeps the DC term finite.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        decay: exponent of the fall-off; 0 gives a flat (white) spectrum.
        device: device of the returned tensor.

    Returns:
        A ``(height, width // 2 + 1)`` float32 tensor in the ``rfft2`` layout.
    """
    check_image_size(height, width)
    check_number("decay", decay, 0.0)
    freqs = fourier_frequencies(height, width, device)
    return 1.0 / freqs.clamp(min=1.0 / max(height, width)) ** decay


def check_image_size(height: int, width: int) -> None:
    """Refuse an image size that is not two positive integers, naming the one at fault."""
    check_int("image height", height, 1)
    check_int("image width", width, 1)


def check_magnitude(magnitude: Tensor, height: int, width: int) -> Tensor:
    if not isinstance(magnitude, Tensor) or magnitude.ndim != 4 or magnitude.shape[1] not in (1, 3):
        shape = tuple(magnitude.shape) if isinstance(magnitude, Tensor) else type(magnitude).__name__
        raise ValueError(f"magnitude must be a (N, 3 or 1, H, W // 2 + 1) tensor, got {shape}.")
    if tuple(magnitude.shape[-2:]) != (height, width // 2 + 1):
        raise ValueError(
            f"magnitude has spectra of shape {tuple(magnitude.shape[-2:])}, but {height}x{width} images have "
            f"{(height, width // 2 + 1)}; compute them from images of the render's size."
        )
    return magnitude.detach()


def amplitude_spectra(
    rgb: Tensor,
    squash: ColourSquash,
    count: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    mean: bool = False,
) -> Tensor:
    """Amplitude spectra of real images in a render's colour basis, one per rendered image.

    Each image is mapped into the decorrelated basis by the inverse of the render's colour squash
    (:meth:`ColourSquash.to_z`, with colours limited to :data:`SPECTRA_LIMIT`), so an image rendered with a real
    image's spectrum and phase would be that image again, up to its most saturated colours, and the orthonormal
    ``rfft2`` amplitude is taken. ``count`` spectra are drawn from the images without
    replacement while there are enough (with replacement after), with ``generator``.

    Args:
        rgb: ``(M, 3, h, w)`` real images, RGB in [0, 1] (a grayscale space takes their grey level); resized
            (bilinear, antialiased) when they are not of the render's size.
        squash: the render's colour squash.
        count: spectra to draw, one per rendered image.
        size: ``(H, W)`` of the rendered images.
        generator: random source of the draw (on the squash's device).
        mean: give every rendered image the mean amplitude spectrum of all the images (MACO's natural
            spectrum) instead of drawing one image's spectrum per rendered image.

    Returns:
        ``(count, C, H, W // 2 + 1)`` amplitude spectra, C the space's channels.
    """
    # The mean takes every image as it is; otherwise one image per rendered image.
    z = _real_in_basis(rgb, squash, size, None if mean else count, generator)
    amplitudes = torch.fft.rfft2(z, norm="ortho").abs()
    if mean:
        return amplitudes.mean(dim=0, keepdim=True).expand(count, -1, -1, -1).contiguous()
    return amplitudes


def layout_images(
    rgb: Tensor,
    squash: ColourSquash,
    count: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    cycles: float = LAYOUT_CYCLES,
) -> Tensor:
    """The coarse layouts of real images in a render's colour basis: each one's frequencies up to ``cycles``.

    A render started from them (``RenderConfig(init_layout=...)``) begins each picture from a different
    photograph's mean colour and large colour regions (a sky above, grass below) instead of the data's mean
    grey, and the optimisation paints the target into it. The images are drawn and mapped into the basis as
    :func:`amplitude_spectra` does, with ``generator``.

    Args:
        rgb: ``(M, 3, h, w)`` real images, RGB in [0, 1].
        squash: the render's colour squash.
        count: layouts to draw, one per rendered image.
        size: ``(H, W)`` of the rendered images.
        generator: random source of the draw (on the squash's device).
        cycles: the highest frequency kept, in cycles per image (:data:`LAYOUT_CYCLES` by default).

    Returns:
        ``(count, C, H, W)`` images in the decorrelated basis, C the space's channels.
    """
    check_number("layout cycles", cycles, 0.0)
    z = _real_in_basis(rgb, squash, size, count, generator)
    height, width = size
    per_image_y = torch.fft.fftfreq(height, device=z.device).view(-1, 1) * height
    per_image_x = torch.fft.rfftfreq(width, device=z.device).view(1, -1) * width
    keep = per_image_y.square() + per_image_x.square() <= cycles**2
    return torch.fft.irfft2(torch.fft.rfft2(z, norm="ortho") * keep, s=size, norm="ortho")


def _real_in_basis(
    rgb: Tensor,
    squash: ColourSquash,
    size: tuple[int, int],
    count: int | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Real images in the render's decorrelated basis: ``count`` drawn with ``generator`` (without replacement
    while there are enough, with replacement after), or all of them for None; resized to ``size``, grey for a
    one-channel space, colours limited to :data:`SPECTRA_LIMIT`."""
    if not isinstance(rgb, Tensor) or rgb.ndim != 4 or rgb.shape[1] != 3 or rgb.shape[0] < 1:
        shape = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
        raise ValueError(f"spectra needs real RGB images of shape (M, 3, H, W), M >= 1, got {shape}.")
    device = squash.correlation.device
    total = rgb.shape[0]
    images = rgb.to(device, squash.correlation.dtype)
    if count is not None:
        if total >= count:
            index = torch.randperm(total, generator=generator, device=device)[:count]
        else:
            index = torch.randint(total, (count,), generator=generator, device=device)
        images = images[index]
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    if squash.channels == 1:
        images = images.mean(dim=1, keepdim=True)
    return squash.to_z(images, SPECTRA_LIMIT)


def data_scale(magnitude: Tensor, size: tuple[int, int], decay: float = 1.0) -> Tensor:
    """A :class:`FourierImage` scale shaped like real images' mean amplitude spectrum instead of ``1 / f ** decay``.

    The Fourier parameterisation's scale is a preconditioner: Adam moves every coefficient by about the learning
    rate, so the scale sets how fast each frequency of each colour direction changes. ``1 / f`` is a guess at the
    spectrum of natural images; this is the spectrum of the data itself, per channel of the decorrelated colour
    basis (in photographs, colour contrast lives at lower frequencies than brightness contrast). It is rescaled
    to the root-mean-square of the ``1 / f ** decay`` scale, so the render's learning rate and start keep their
    meaning.

    Args:
        magnitude: ``(C, H, W // 2 + 1)`` mean amplitude spectrum (or ``(N, C, H, W // 2 + 1)``, whose first image
            is taken), e.g. ``amplitude_spectra(..., mean=True)``.
        size: ``(H, W)`` of the images.
        decay: exponent of the ``1 / f`` scale whose size the result takes.

    Returns:
        A ``(C, H, W // 2 + 1)`` scale.
    """
    height, width = size
    batch = magnitude if magnitude.ndim == 4 else magnitude[None]
    magnitude = check_magnitude(batch, height, width)[0].clone()
    # The DC term is each photograph's mean colour, far from the data's mean: 2-3x the lowest frequencies'
    # amplitude on CIFAR-10. As a step size it would swing the pictures' mean colour, so it takes the lowest
    # frequency's value instead, as the 1/f scale's floor does.
    freqs = fourier_frequencies(height, width, magnitude.device)
    lowest = freqs == freqs[freqs > 0].min() if freqs.numel() > 1 else freqs >= 0
    magnitude[:, 0, 0] = magnitude[:, lowest].mean(dim=1)
    reference = fourier_scale(height, width, decay, magnitude.device)
    rms = magnitude.square().mean().sqrt().clamp(min=1e-12)
    return magnitude * (reference.square().mean().sqrt() / rms)
