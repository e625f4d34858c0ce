"""The colour squash: how an image in the decorrelated colour basis becomes colours in (0, 1) and model inputs.

Stage 2 of a render's image (see :mod:`featvis.engine.param`): :class:`ColourSquash` maps the parameterisation's
image ``z`` to RGB through the data's colour correlation and a sigmoid around its mean colour, feeds the model its
own input space, and inverts the mapping for real images (:meth:`ColourSquash.to_z`), so a phase-only render can
take their amplitude spectra in the basis it optimises in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featvis.colour import ColourTransform, InputSpace

# Keeps logit(mean) finite for data whose mean colour is near black or white.
_MEAN_CLAMP = 0.02
# Half an 8-bit level: real images' 0 and 255 map to finite logits in ColourSquash.to_z.
_HALF_LEVEL = 0.5 / 255
#: The basis of an input space that is no colour transform (a ``to_model``/``to_rgb`` pair) when no ``basis`` is
#: given: mean grey 0.5 and standard deviation 0.25 in every channel, no mixing between channels, so that
#: ``rgb = sigmoid(z)`` channel by channel.
NEUTRAL_MEAN, NEUTRAL_STD = 0.5, 0.25


class ColourSquash:
    """Maps images in the decorrelated colour basis to colours in (0, 1) and to model space.

    ``rgb = sigmoid(logit(mean) + (z @ C) / (mean * (1 - mean)))`` per pixel, where ``mean`` is the basis's mean
    colour and ``C`` the colour correlation: ``basis.inverse`` (the inverse of the whitening matrix ``W``) when
    ``decorrelate`` is set, else the diagonal matrix of the per-channel colour standard deviations (no mixing
    between channels). Dividing by the sigmoid's slope at the mean colour makes ``basis.to_model(rgb) == z`` to
    first order around the mean, so a unit of ``z`` is one standard deviation of real colours. For a 1-channel
    (grayscale) input space every tensor has one channel: the "colours" are grey levels.

    The basis is ``colour`` itself unless ``basis`` is given: a model trained on plain mean/std-normalised RGB
    (or on raw RGB) takes ``colour`` as its input space, but optimising in that per-channel space gives garish
    colours, so such a render optimises in a whitening fitted to the training pixels (``basis``) while
    :meth:`to_model` still feeds the model its own input space. An input space given by a function pair has no
    basis of its own: without ``basis`` it optimises in :data:`NEUTRAL_MEAN` / :data:`NEUTRAL_STD`.

    The colour tensors are copied (so tensors made under ``torch.inference_mode`` can still enter autograd) and
    moved to ``device`` and ``dtype``.

    Args:
        colour: the model's input space (RGB in [0, 1], or grey for a 1-channel space, to model inputs).
        decorrelate: optimise in the decorrelated basis (True) or per colour channel (False).
        device: device of the images.
        dtype: floating dtype of the images.
        basis: the colour transform whose mean and correlation ``z`` is expressed in; None uses ``colour``.
    """

    def __init__(
        self,
        colour: InputSpace,
        decorrelate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        basis: ColourTransform | None = None,
    ) -> None:
        self.colour = colour.copy(device, dtype)
        self.channels = channels = self.colour.channels
        self.basis: ColourTransform
        if basis is not None:
            self.basis = basis.copy(device, dtype)
        elif isinstance(self.colour, ColourTransform):
            # The same tensors as ``colour`` when no basis is given, so such renders stay bit for bit as before.
            self.basis = self.colour
        else:
            neutral = ColourTransform.from_normalisation([NEUTRAL_MEAN] * channels, [NEUTRAL_STD] * channels)
            self.basis = neutral.copy(device, dtype)
        if self.basis.channels != channels:
            raise ValueError(
                f"the colour basis has {self.basis.channels} channel(s) but the input space {channels}; fit the "
                f"basis on {'grey (N, 1, H, W)' if channels == 1 else 'RGB (N, 3, H, W)'} images."
            )
        inverse = self.basis.inverse
        if not decorrelate:
            # Per-channel standard deviation of the data: column norms of W^-1 (cov = W^-T W^-1).
            inverse = torch.diag(inverse.norm(dim=0))
        clamped = self.basis.mean.clamp(_MEAN_CLAMP, 1 - _MEAN_CLAMP)
        self.correlation = inverse / (clamped * (1 - clamped)).view(1, channels)
        self.offset = torch.logit(clamped).view(1, channels, 1, 1)

    def to_rgb(self, z: Tensor) -> Tensor:
        """Colours in (0, 1) from images in the decorrelated basis, both ``(N, C, H, W)``."""
        return torch.sigmoid(torch.einsum("nchw,cd->ndhw", z, self.correlation) + self.offset)

    def to_z(self, rgb: Tensor, limit: float = _HALF_LEVEL) -> Tensor:
        """The inverse of :meth:`to_rgb`: images in the decorrelated basis from colours, ``(N, C, H, W)``.

        Args:
            rgb: colours in [0, 1].
            limit: colours are kept inside ``[limit, 1 - limit]`` first, where the sigmoid's inverse is finite;
                the default, half an 8-bit level, inverts every colour a PNG can hold exactly.
        """
        rgb = rgb.to(self.correlation).clamp(limit, 1 - limit)
        logits = torch.logit(rgb) - self.offset
        return torch.einsum("ndhw,dc->nchw", logits, torch.linalg.inv(self.correlation))

    def to_model(self, rgb: Tensor) -> Tensor:
        """Model-space images: the input space's own ``to_model``."""
        return self.colour.to_model(rgb)
