"""Colour spaces: the map between RGB in [0, 1] and the space a classifier is trained in.

Pure PyTorch (plus SciPy for the Cholesky factor), shared by the data module, the visualisation engine and
checkpoints. A :class:`ColourTransform` is an affine per-pixel map ``z = (rgb - mean) @ matrix``; the same form
covers Cholesky whitening (``matrix = cholesky(inv(cov)).T``) and ordinary mean/std normalisation
(``matrix = diag(1 / std)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn


class ColourTransform(nn.Module):
    """Per-pixel affine colour map between RGB in [0, 1] and model space.

    ``to_model(rgb) = (rgb - mean) @ matrix`` applied to the channel axis of ``(N, 3, H, W)`` tensors, and
    ``to_rgb`` its exact inverse. Both are differentiable. The mean and matrices are buffers, so they follow the
    module's device and are saved in checkpoints.

    Args:
        mean: RGB channel mean, 3 values in [0, 1] units.
        matrix: 3x3 matrix applied to mean-centred colours as row vectors.
    """

    # Registered buffers, declared so type checkers see Tensors rather than ``Tensor | Module``.
    mean: Tensor
    matrix: Tensor
    inverse: Tensor

    def __init__(self, mean: Sequence[float] | Tensor, matrix: Sequence[Sequence[float]] | Tensor) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        matrix_t = torch.as_tensor(matrix, dtype=torch.float64)
        if mean_t.shape != (3,):
            raise ValueError(f"mean must hold 3 values (R, G, B), got shape {tuple(mean_t.shape)}.")
        if matrix_t.shape != (3, 3):
            raise ValueError(f"matrix must be 3x3, got shape {tuple(matrix_t.shape)}.")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(matrix_t).all()):
            raise ValueError("mean and matrix must be finite.")
        if abs(float(torch.linalg.det(matrix_t))) < 1e-12:
            raise ValueError("matrix is singular; a colour transform must be invertible.")
        self.register_buffer("mean", mean_t.float())
        self.register_buffer("matrix", matrix_t.float())
        self.register_buffer("inverse", torch.linalg.inv(matrix_t).float())

    @classmethod
    def from_pixels(cls, pixels: Tensor | np.ndarray) -> ColourTransform:
        """Cholesky whitening fitted to pixels, so transformed pixels have identity covariance.

        Args:
            pixels: images as ``(N, 3, H, W)`` uint8 (0..255) or float in [0, 1], or ``(M, 3)`` float colours.
        """
        arr = pixels.detach().cpu().numpy() if isinstance(pixels, Tensor) else np.asarray(pixels)
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        if arr.ndim == 4:
            if arr.shape[1] != 3:
                raise ValueError(f"pixels must be (N, 3, H, W), got shape {arr.shape}.")
            colours = arr.transpose(1, 0, 2, 3).reshape(3, -1)
        elif arr.ndim == 2 and arr.shape[1] == 3:
            colours = arr.T
        else:
            raise ValueError(f"pixels must be (N, 3, H, W) images or (M, 3) colours, got shape {arr.shape}.")
        # Accumulate in float64 in chunks: 50k CIFAR images are 51M values per channel.
        count = colours.shape[1]
        total = np.zeros(3)
        outer = np.zeros((3, 3))
        for start in range(0, count, 1 << 22):
            chunk = colours[:, start : start + (1 << 22)].astype(np.float64) / scale
            total += chunk.sum(axis=1)
            outer += chunk @ chunk.T
        mean = total / count
        cov = outer / count - np.outer(mean, mean)
        try:
            upper = scipy.linalg.cholesky(np.linalg.inv(cov), lower=False)
        except np.linalg.LinAlgError as err:
            raise ValueError(
                f"the pixels' colour covariance is singular or not positive definite ({err}), e.g. greyscale "
                "or constant images; such colours cannot be whitened (use mean/std normalisation instead)."
            ) from err
        return cls(torch.from_numpy(mean), torch.from_numpy(upper.T.copy()))

    @classmethod
    def from_normalisation(cls, mean: Sequence[float], std: Sequence[float]) -> ColourTransform:
        """The usual ``(rgb - mean) / std`` normalisation, written as a colour transform.

        Args:
            mean: per-channel mean in [0, 1] units.
            std: per-channel standard deviation, all positive.
        """
        if len(mean) != 3:
            raise ValueError(f"the normalisation mean must hold 3 values (R, G, B), got {list(mean)!r}.")
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if std_t.shape != (3,) or bool((std_t <= 0).any()):
            raise ValueError(f"std must be 3 positive values, got {std_t.tolist()}.")
        return cls(mean, torch.diag(1.0 / std_t))

    @classmethod
    def find(cls, *sources: object) -> ColourTransform | None:
        """The ``colour`` attribute of the first source that has a ColourTransform there (datamodule, model).

        Args:
            sources: objects to ask in order; None entries are skipped.
        """
        for source in sources:
            colour = getattr(source, "colour", None)
            if isinstance(colour, ColourTransform):
                return colour
        return None

    @classmethod
    def identity(cls) -> ColourTransform:
        """Model space equals RGB in [0, 1]."""
        return cls(torch.zeros(3), torch.eye(3))

    @staticmethod
    def _check_shape(images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}.")

    @classmethod
    def _map_channels(cls, images: Tensor, matrix: Tensor) -> Tensor:
        cls._check_shape(images)
        return torch.einsum("nchw,cd->ndhw", images, matrix.to(images.dtype))

    def to_model(self, rgb: Tensor) -> Tensor:
        """Map RGB images in [0, 1], shape ``(N, 3, H, W)``, to model space."""
        # Check before subtracting the mean: broadcasting would turn a (3, H, W) image into (1, 3, H, W).
        self._check_shape(rgb)
        return self._map_channels(rgb - self.mean.to(rgb.dtype).view(1, 3, 1, 1), self.matrix)

    def to_rgb(self, model_space: Tensor) -> Tensor:
        """Map model-space images back to RGB (not clipped)."""
        return self._map_channels(model_space, self.inverse) + self.mean.to(model_space.dtype).view(
            1, 3, 1, 1
        )

    def copy(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ColourTransform:
        """An independent copy with the same buffers, bit for bit, on ``device`` in ``dtype``.

        The copy's tensors are ordinary ones even if this transform was made under ``torch.inference_mode``
        (as in a Lightning validation loop), so they can enter autograd. The inverse is copied, not recomputed,
        so ``to_rgb`` stays exactly the same.

        Args:
            device: device of the copy; None keeps the current one.
            dtype: floating dtype of the copy; None keeps float32.
        """
        clone = ColourTransform.__new__(ColourTransform)
        nn.Module.__init__(clone)
        for name in ("mean", "matrix", "inverse"):
            buffer = getattr(self, name).detach().clone().to(device=device, dtype=dtype)
            clone.register_buffer(name, buffer)
        return clone

    def forward(self, rgb: Tensor) -> Tensor:
        return self.to_model(rgb)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}"
