"""Image parameterisations: what the optimiser changes, and how it becomes an image in the colour basis.

An image is produced in three stages:

1. An :class:`ImageParam` (:class:`FourierImage`, scaled per frequency as :mod:`featvis.engine.spectrum`
   says; :class:`PhaseImage`; or :class:`PixelImage`) holds the optimised leaf tensor and turns it into an image ``z``
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
from typing import Any, Literal

import torch
from torch import Tensor

from featvis.engine.checks import check_int, check_number
from featvis.engine.spectrum import check_image_size, check_magnitude, fourier_scale

Parameterisation = Literal["fourier", "pixel", "phase"]
PARAMETERISATIONS: tuple[str, ...] = ("fourier", "pixel", "phase")


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

    @abstractmethod
    def encode(self, z: Tensor) -> Tensor:
        """Parameter values whose image is ``z``, ``(N, C, H, W)`` in the colour basis (for a phase-only image:
        whose phases are ``z``'s), e.g. to add to the random start."""

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
        check_image_size(height, width)
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

    def encode(self, z: Tensor) -> Tensor:
        return z.to(self.parameter)

    def split(self, sizes: Sequence[int]) -> list[ImageParam]:
        return [PixelImage.from_parameter(part) for part in self._split_leaf(self.parameter, sizes)]


class FourierImage(ImageParam):
    """Images whose ``rfft2`` spectrum is the parameter, scaled per frequency by :func:`~featvis.engine.spectrum.fourier_scale`.

    The parameter has shape ``(N, C, H, W // 2 + 1, 2)`` (real and imaginary parts). Scaling by ``1 / f ** decay``
    makes equal-sized optimiser steps change low frequencies more than high ones, which steers the optimisation
    towards images with a natural spectrum instead of high-frequency adversarial patterns. A ``scale`` given
    instead (e.g. :func:`~featvis.engine.spectrum.data_scale`, the real images' own mean spectrum) does the same with another shape, and
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
        check_image_size(height, width)
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

    def encode(self, z: Tensor) -> Tensor:
        spectrum = torch.fft.rfft2(z.to(self.scale), norm="ortho")
        return torch.view_as_real(spectrum / self.scale).to(self.parameter)

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
            :func:`~featvis.engine.spectrum.amplitude_spectra`).
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
        check_image_size(height, width)
        magnitude = check_magnitude(magnitude, height, width)
        shape = (*magnitude.shape, 2)
        self.parameter = _random_leaf(shape, max(init_std, 1e-6), generator, dtype)
        self.height, self.width, self.decay = height, width, 0.0
        self.magnitude = magnitude.to(self.parameter.device, dtype)

    @classmethod
    def from_phase(cls, parameter: Tensor, magnitude: Tensor, height: int, width: int) -> PhaseImage:
        """Wrap an existing ``(N, C, height, width // 2 + 1, 2)`` leaf tensor and its images' amplitude spectra."""
        magnitude = check_magnitude(magnitude, height, width)
        if tuple(parameter.shape) != (*magnitude.shape, 2):
            raise ValueError(
                f"a phase parameter has shape {(*magnitude.shape, 2)}, got {tuple(parameter.shape)}."
            )
        self = cls.__new__(cls)
        self.height, self.width, self.decay = height, width, 0.0
        self.parameter, self.magnitude = parameter, magnitude.to(parameter)
        return self

    def encode(self, z: Tensor) -> Tensor:
        # Only a coefficient's direction counts: z's own, where z has energy, dominates a small random start.
        return torch.view_as_real(torch.fft.rfft2(z.to(self.magnitude), norm="ortho")).to(self.parameter)

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
            :func:`~featvis.engine.spectrum.data_scale`).
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
