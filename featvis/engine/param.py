"""Image parameterisations: what the optimiser changes, and how it becomes an image in the colour basis.

An image is produced in three stages:

1. An :class:`ImageParam` (:class:`FourierImage`, scaled by ``1 / f ** decay`` or by :func:`data_scale`,
   :class:`PhaseImage` or :class:`PixelImage`) holds the optimised leaf tensor and turns it into an image ``z``
   in a *decorrelated colour basis*, with the input space's channels:
   3 (RGB), or 1 for a grayscale model (then the basis is one-dimensional: the mean and spread of the grey level).
2. :class:`~featvis.engine.squash.ColourSquash` maps ``z`` to colours in (0, 1): multiply by the colour correlation (the inverse of the
   data's whitening matrix ``W``), add the logit of the data's mean colour and apply a sigmoid. The gain is chosen
   so that, near the mean colour, ``z`` equals the whitened image to first order; the sigmoid then keeps every
   colour inside the RGB cube, so nothing has to be clipped at display time. The whitening is the model's own
   colour transform, or a separate colour basis fitted to the data when the model's is a plain normalisation.
3. The renderer applies its random transforms to the colour images, then ``colour.to_model(rgb)`` gives exactly
   the kind of input the classifier was trained on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from featvis.engine.checks import check_int, check_number
from featvis.engine.squash import ColourSquash

Parameterisation = Literal["fourier", "pixel", "phase"]
PARAMETERISATIONS: tuple[str, ...] = ("fourier", "pixel", "phase")
FourierScale = Literal["1/f", "data"]
FOURIER_SCALES: tuple[str, ...] = get_args(FourierScale)

#: Colours are limited to [SPECTRA_LIMIT, 1 - SPECTRA_LIMIT] before their spectra are taken for a phase-only
#: render. Near-black and near-white pixels have huge logits; a real image's saturated highlights put that
#: energy at its edges, but with the phases free it becomes high-frequency noise all over the picture. Measured on
#: the default model after 2 epochs, 10 classes x 4 against real test images (colour distance, spectral gap;
#: `python -m benchmarks.colour`): half an 8-bit level 0.046, 0.291; 0.05: 0.089, 0.131; 0.1: 0.111, 0.095;
#: featvis's 1/f default 0.197, 0.331. 0.05 keeps both well inside the quality bars (0.10 and 0.30).
SPECTRA_LIMIT = 0.05


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
    _check_size(height, width)
    check_number("decay", decay, 0.0)
    freqs = fourier_frequencies(height, width, device)
    return 1.0 / freqs.clamp(min=1.0 / max(height, width)) ** decay


def _check_size(height: int, width: int) -> None:
    check_int("image height", height, 1)
    check_int("image width", width, 1)


class ImageParam(ABC):
    """A batch of images described by one optimisable leaf tensor, :attr:`parameter`."""

    parameter: Tensor
    height: int
    width: int

    @abstractmethod
    def image(self) -> Tensor:
        """The images in the decorrelated colour basis, ``(N, C, H, W)``, differentiable in :attr:`parameter`."""

    @abstractmethod
    def split(self, sizes: Sequence[int]) -> list[ImageParam]:
        """Independent parameterisations of consecutive groups of images (new leaves, copied values)."""

    def __len__(self) -> int:
        return self.parameter.shape[0]

    @staticmethod
    def _split_leaf(parameter: Tensor, sizes: Sequence[int]) -> list[Tensor]:
        if sum(sizes) != parameter.shape[0] or any(s < 1 for s in sizes):
            raise ValueError(f"sizes {list(sizes)} must be positive and add up to {parameter.shape[0]}.")
        return [part.detach().clone().requires_grad_(True) for part in parameter.split(list(sizes))]


class PixelImage(ImageParam):
    """Every pixel of every image is a free parameter (the plain baseline).

    Args:
        batch: number of images.
        height: image height in pixels.
        width: image width in pixels.
        init_std: standard deviation of the random start.
        generator: random source of the start (its device is the parameter's device).
        dtype: floating dtype of the parameter.
        channels: colour channels, 3 (RGB) or 1 (grey).
    """

    def __init__(
        self,
        batch: int,
        height: int,
        width: int,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        channels: int = 3,
    ) -> None:
        _check_size(height, width)
        self.height, self.width = height, width
        self.parameter = _random_leaf((batch, _channels(channels), height, width), init_std, generator, dtype)

    @classmethod
    def from_parameter(cls, parameter: Tensor) -> PixelImage:
        """Wrap an existing ``(N, C, H, W)`` leaf tensor, C = 3 or 1."""
        if parameter.ndim != 4 or parameter.shape[1] not in (1, 3):
            raise ValueError(f"a pixel parameter has shape (N, 3 or 1, H, W), got {tuple(parameter.shape)}.")
        self = cls.__new__(cls)
        self.height, self.width = parameter.shape[-2:]
        self.parameter = parameter
        return self

    def image(self) -> Tensor:
        return self.parameter

    def split(self, sizes: Sequence[int]) -> list[ImageParam]:
        return [PixelImage.from_parameter(part) for part in self._split_leaf(self.parameter, sizes)]


class FourierImage(ImageParam):
    """Images whose ``rfft2`` spectrum is the parameter, scaled per frequency by :func:`fourier_scale`.

    The parameter has shape ``(N, C, H, W // 2 + 1, 2)`` (real and imaginary parts). Scaling by ``1 / f ** decay``
    makes equal-sized optimiser steps change low frequencies more than high ones, which steers the optimisation
    towards images with a natural spectrum instead of high-frequency adversarial patterns. A ``scale`` given
    instead (e.g. :func:`data_scale`, the real images' own mean spectrum) does the same with another shape, and
    may differ between colour channels.

    Args:
        batch: number of images.
        height: image height in pixels.
        width: image width in pixels.
        init_std: standard deviation of the random start of every spectral coefficient.
        generator: random source of the start (its device is the parameter's device).
        dtype: floating dtype of the parameter.
        decay: exponent of the ``1 / f`` scaling (the fourth positional argument, before ``init_std``).
        channels: colour channels, 3 (RGB) or 1 (grey).
        scale: per-frequency scale, ``(H, W // 2 + 1)`` or per channel ``(C, H, W // 2 + 1)``, replacing the
            ``1 / f ** decay`` scale; None keeps that.
    """

    def __init__(
        self,
        batch: int,
        height: int,
        width: int,
        decay: float = 1.0,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        channels: int = 3,
        scale: Tensor | None = None,
    ) -> None:
        _check_size(height, width)
        shape = (batch, _channels(channels), height, width // 2 + 1, 2)
        self.parameter = _random_leaf(shape, init_std, generator, dtype)
        self.height, self.width, self.decay = height, width, decay
        self.scale = self._scale_for(self.parameter, scale)

    @classmethod
    def from_parameter(
        cls, parameter: Tensor, height: int, width: int, decay: float = 1.0, scale: Tensor | None = None
    ) -> FourierImage:
        """Wrap an existing ``(N, C, height, width // 2 + 1, 2)`` leaf tensor, C = 3 or 1 (``scale`` as in the
        constructor)."""
        channels = parameter.shape[1] if parameter.ndim == 5 and parameter.shape[1] in (1, 3) else 3
        expected = (channels, height, width // 2 + 1, 2)
        if parameter.ndim != 5 or tuple(parameter.shape[1:]) != expected:
            raise ValueError(f"a Fourier parameter has shape (N, *{expected}), got {tuple(parameter.shape)}.")
        self = cls.__new__(cls)
        self.height, self.width, self.decay = height, width, decay
        self.parameter = parameter
        self.scale = self._scale_for(parameter, scale)
        return self

    def _scale_for(self, parameter: Tensor, scale: Tensor | None) -> Tensor:
        if scale is None:
            return fourier_scale(self.height, self.width, self.decay, parameter.device).to(parameter.dtype)
        layout = (self.height, self.width // 2 + 1)
        if not isinstance(scale, Tensor) or tuple(scale.shape) not in (layout, (parameter.shape[1], *layout)):
            shape = tuple(scale.shape) if isinstance(scale, Tensor) else type(scale).__name__
            raise ValueError(
                f"scale must be a {layout} or {(parameter.shape[1], *layout)} tensor for these images, got {shape}."
            )
        return scale.detach().to(parameter.device, parameter.dtype)

    def spectrum(self) -> Tensor:
        """The scaled complex spectrum, ``(N, C, H, W // 2 + 1)``."""
        return torch.view_as_complex(self.parameter) * self.scale

    def image(self) -> Tensor:
        # Orthonormal inverse FFT: the spectrum's scale does not depend on the image size.
        return torch.fft.irfft2(self.spectrum(), s=(self.height, self.width), norm="ortho")

    def split(self, sizes: Sequence[int]) -> list[ImageParam]:
        return [
            FourierImage.from_parameter(part, self.height, self.width, self.decay, self.scale)
            for part in self._split_leaf(self.parameter, sizes)
        ]


class PhaseImage(FourierImage):
    """Images whose amplitude spectrum is fixed to that of real images; only the phase is optimised.

    The MACO idea (Fel et al., 2023): natural images owe their look to their amplitude spectrum, and an
    adversarial pattern needs the energy at frequencies where real images have little. Each image here keeps the
    amplitude spectrum ``magnitude`` of one real image (in the decorrelated colour basis, so its contrast in every
    colour direction and its mean colour's size are those of a photograph) and the optimiser turns only the phase
    of every coefficient. The parameter is laid out as :class:`FourierImage`'s (real and imaginary parts, whose
    direction is the phase), so warm starts and chunking work the same way. The DC (mean colour) and Nyquist
    terms of an ``rfft2`` spectrum are real: there the phase chooses ``magnitude * cos(phase)``, any value up to the
    real image's own.

    Args:
        magnitude: ``(N, C, height, width // 2 + 1)`` amplitude spectra, one per image (see
            :func:`amplitude_spectra`).
        height: image height in pixels.
        width: image width in pixels.
        init_std: standard deviation of the random start of every coefficient (its scale does not matter: only
            its direction, a uniformly random phase, does).
        generator: random source of the start (its device is the parameter's device).
        dtype: floating dtype of the parameter.
    """

    def __init__(
        self,
        magnitude: Tensor,
        height: int,
        width: int,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_size(height, width)
        magnitude = _check_magnitude(magnitude, height, width)
        shape = (*magnitude.shape, 2)
        self.parameter = _random_leaf(shape, max(init_std, 1e-6), generator, dtype)
        self.height, self.width, self.decay = height, width, 0.0
        self.magnitude = magnitude.to(self.parameter.device, dtype)

    @classmethod
    def from_phase(cls, parameter: Tensor, magnitude: Tensor, height: int, width: int) -> PhaseImage:
        """Wrap an existing ``(N, C, height, width // 2 + 1, 2)`` leaf tensor and its images' amplitude spectra."""
        magnitude = _check_magnitude(magnitude, height, width)
        if tuple(parameter.shape) != (*magnitude.shape, 2):
            raise ValueError(
                f"a phase parameter has shape {(*magnitude.shape, 2)}, got {tuple(parameter.shape)}."
            )
        self = cls.__new__(cls)
        self.height, self.width, self.decay = height, width, 0.0
        self.parameter, self.magnitude = parameter, magnitude.to(parameter)
        return self

    def spectrum(self) -> Tensor:
        coefficients = torch.view_as_complex(self.parameter)
        # A unit complex number per coefficient: its phase. The floor only guards an exact zero.
        return self.magnitude * coefficients / coefficients.abs().clamp(min=1e-12)

    def split(self, sizes: Sequence[int]) -> list[ImageParam]:
        magnitudes = self.magnitude.split(list(sizes))
        return [
            PhaseImage.from_phase(part, magnitude, self.height, self.width)
            for part, magnitude in zip(self._split_leaf(self.parameter, sizes), magnitudes, strict=True)
        ]


def _check_magnitude(magnitude: Tensor, height: int, width: int) -> Tensor:
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
    if not isinstance(rgb, Tensor) or rgb.ndim != 4 or rgb.shape[1] != 3 or rgb.shape[0] < 1:
        shape = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
        raise ValueError(f"spectra needs real RGB images of shape (M, 3, H, W), M >= 1, got {shape}.")
    device = squash.correlation.device
    total = rgb.shape[0]
    images = rgb.to(device, squash.correlation.dtype)
    if not mean:  # the mean takes every image as it is; otherwise one image per rendered image
        if total >= count:
            index = torch.randperm(total, generator=generator, device=device)[:count]
        else:
            index = torch.randint(total, (count,), generator=generator, device=device)
        images = images[index]
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    if squash.channels == 1:
        images = images.mean(dim=1, keepdim=True)
    amplitudes = torch.fft.rfft2(squash.to_z(images, SPECTRA_LIMIT), norm="ortho").abs()
    if mean:
        return amplitudes.mean(dim=0, keepdim=True).expand(count, -1, -1, -1).contiguous()
    return amplitudes


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
    magnitude = _check_magnitude(batch, height, width)[0].clone()
    # The DC term is each photograph's mean colour, far from the data's mean: 2-3x the lowest frequencies'
    # amplitude on CIFAR-10. As a step size it would swing the pictures' mean colour, so it takes the lowest
    # frequency's value instead, as the 1/f scale's floor does.
    freqs = fourier_frequencies(height, width, magnitude.device)
    lowest = freqs == freqs[freqs > 0].min() if freqs.numel() > 1 else freqs >= 0
    magnitude[:, 0, 0] = magnitude[:, lowest].mean(dim=1)
    reference = fourier_scale(height, width, decay, magnitude.device)
    rms = magnitude.square().mean().sqrt().clamp(min=1e-12)
    return magnitude * (reference.square().mean().sqrt() / rms)


def _channels(channels: int) -> int:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 3 (RGB) or 1 (grey), got {channels!r}.")
    return channels


def _random_leaf(
    shape: tuple[int, ...], init_std: float, generator: torch.Generator | None, dtype: torch.dtype
) -> Tensor:
    """A leaf tensor of normal noise with standard deviation ``init_std``, drawn on the generator's device.

    ``shape`` is ``(batch, channels, ...)``; batch and ``init_std`` are checked first.
    """
    check_int("batch", shape[0], 1)
    check_number("init_std", init_std, 0.0)
    device = generator.device if generator is not None else None
    start = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return (start * init_std).requires_grad_(True)


def make_image_param(
    parameterisation: Parameterisation,
    batch: int,
    height: int,
    width: int,
    *,
    decay: float = 1.0,
    magnitude: Tensor | None = None,
    scale: Tensor | None = None,
    **start: Any,
) -> ImageParam:
    """Build a :class:`FourierImage` (``"fourier"``), :class:`PhaseImage` (``"phase"``) or :class:`PixelImage`.

    Args:
        parameterisation: ``"fourier"``, ``"phase"`` (needs ``magnitude``) or ``"pixel"``.
        batch: number of images.
        height: image height in pixels.
        width: image width in pixels.
        decay: exponent of the Fourier ``1 / f`` scaling (ignored for pixels).
        magnitude: the amplitude spectra of a ``"phase"`` parameterisation, ``(batch, C, H, W // 2 + 1)``.
        scale: a ``"fourier"`` parameterisation's per-frequency scale instead of ``1 / f ** decay`` (see
            :func:`data_scale`).
        **start: the random start and channels, as the classes take them: ``init_std``, ``generator``,
            ``dtype``, ``channels``.
    """
    if parameterisation == "fourier":
        return FourierImage(batch, height, width, decay, scale=scale, **start)
    if parameterisation == "phase":
        if magnitude is None or magnitude.shape[0] != batch or magnitude.shape[1] != start.get("channels", 3):
            raise ValueError(
                f"parameterisation 'phase' needs {batch} amplitude spectra with {start.get('channels', 3)} "
                "channel(s) (amplitude_spectra of real images); got "
                f"{None if magnitude is None else tuple(magnitude.shape)}."
            )
        start.pop("channels", None)
        return PhaseImage(magnitude, height, width, **start)
    if parameterisation == "pixel":
        return PixelImage(batch, height, width, **start)
    raise ValueError(
        f"unknown parameterisation {parameterisation!r}; choose one of {list(PARAMETERISATIONS)}."
    )
