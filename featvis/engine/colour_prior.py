"""The colour prior: a term that pulls a render's pixel colours towards the data's colour distribution.

The pictures of a plain render are greyer than photographs: 96 Adam steps leave them at about half a photograph's
colour contrast, around one shared mean colour (benchmarks/README.md, "why the pictures are grey"). The data's
pixel-colour distribution is known without any image: the colour basis is a whitening fitted to the training
pixels, so its mean is their mean colour and ``inverse.T @ inverse`` their colour covariance. :class:`ColourPrior`
measures the squared Fréchet (2-Wasserstein) distance between the Gaussian of a render's pooled pixel colours and
that of the data, differentiably; a render subtracts it, times ``RenderConfig.colour_weight`` and the number of
pictures, from its objective. Pooled over every picture of the render, it leaves the model free to choose which
picture, and which part of it, carries which colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from featvis.colour import ColourTransform

# Keeps the square roots' gradients finite where a covariance is (nearly) singular, e.g. a grey start.
_EIGEN_FLOOR = 1e-8


def frechet_squared(
    mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, root_b: Tensor, eigen_floor: float = 0.0
) -> Tensor:
    """Squared Fréchet distance between two Gaussians, ``|m_a - m_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^½)``.

    Args:
        mean_a: mean of the first Gaussian, ``(C,)``.
        cov_a: its covariance, ``(C, C)``.
        mean_b: mean of the second, ``(C,)``.
        root_b: the symmetric square root of its covariance, ``(C, C)`` (see :func:`psd_root`).
        eigen_floor: lower bound of the eigenvalues under the square root; above 0 it keeps the gradient finite
            where ``cov_a`` is singular (e.g. grey pictures), at a bias of ``2 * sqrt(eigen_floor)`` per channel.

    Returns:
        A 0-d tensor, differentiable in every argument.
    """
    # tr((S_a S_b)^½) = tr((S_b^½ S_a S_b^½)^½): eigenvalues of a symmetric PSD matrix, stable for a singular S_a.
    cross = torch.linalg.eigvalsh(root_b @ cov_a @ root_b).clamp(min=eigen_floor).sqrt().sum()
    return (mean_a - mean_b).square().sum() + cov_a.trace() + (root_b @ root_b).trace() - 2 * cross


def psd_root(cov: Tensor) -> Tensor:
    """The symmetric square root of a positive semi-definite matrix (negative eigenvalues from rounding: 0)."""
    values, vectors = torch.linalg.eigh(cov)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


class ColourPrior:
    """The data's pixel-colour moments, and the distance of a render's pictures from them.

    The distance is of all the pictures' pixels pooled. A render that feeds its pictures to the model in chunks
    takes each chunk's gradient with the other chunks' pixel sums held fixed (:meth:`held_fixed`, :meth:`sums`,
    then :meth:`distance`), which is the gradient of the pooled distance, so chunking does not change the pictures.

    Args:
        basis: the colour basis of the render (a whitening fitted to the training pixels, or a mean/std
            normalisation); its mean colour and covariance stand for the data's.
    """

    @staticmethod
    def describes_data(basis: ColourTransform) -> bool:
        """Whether ``basis`` says where real colours lie: its mean colour strictly inside (0, 1) in every channel.

        A whitening fitted to training pixels, a dataset's mean/std normalisation and the neutral basis of an input
        space given by functions do; the identity and a bare ``[0, 255]`` scaling (mean 0) do not, and a render
        with them leaves the prior out rather than pull every picture towards black.
        """
        return bool(((basis.mean > 0) & (basis.mean < 1)).all())

    def __init__(self, basis: ColourTransform) -> None:
        # Float64 throughout: a chunked render adds the chunks' sums in another order than one pass would, and
        # Adam magnifies rounding in small gradients, so float32 sums would let chunking change the pictures. (Apple's
        # MPS has no float64: there it is float32, and chunking changes the pictures by rounding.)
        self.dtype = torch.float32 if basis.mean.device.type == "mps" else torch.float64
        inverse = basis.inverse.to(self.dtype)
        self.mean = basis.mean.to(self.dtype)
        self.root = psd_root(inverse.T @ inverse)

    def sums(self, rgb: Tensor) -> tuple[Tensor, Tensor, int]:
        """Colour sum ``(C,)``, sum of outer products ``(C, C)`` and pixel count of ``(N, C, H, W)`` colours."""
        pixels = rgb.to(self.dtype).transpose(0, 1).reshape(rgb.shape[1], -1)
        return pixels.sum(dim=1), pixels @ pixels.T, pixels.shape[1]

    def held_fixed(self, chunks: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """For each chunk of a render's pictures, the colour sums of all the other chunks, held fixed in its gradient.

        The prior is a statistic of every picture's pixels, but a chunked render takes one chunk's gradient at a
        time; adding these to the chunk's own :meth:`sums` gives the pooled sums, and each chunk the pooled
        distance's exact gradient.

        Args:
            chunks: each chunk's pictures, ``(N_i, C, H, W)`` colours (computed without gradients).
        """
        sums = [self.sums(chunk)[:2] for chunk in chunks]
        total = torch.stack([part[0] for part in sums]).sum(dim=0)
        outer = torch.stack([part[1] for part in sums]).sum(dim=0)
        return [(total - part[0], outer - part[1]) for part in sums]

    def distance(self, total: Tensor, outer: Tensor, count: int) -> Tensor:
        """Squared Fréchet distance of the pixels summarised by :meth:`sums` from the data's colours."""
        mean = total / count
        return frechet_squared(
            mean, outer / count - torch.outer(mean, mean), self.mean, self.root, _EIGEN_FLOOR
        )

    def __call__(self, rgb: Tensor) -> Tensor:
        """Squared Fréchet distance between the pooled pixel colours of ``rgb`` ``(N, C, H, W)`` and the data's."""
        return self.distance(*self.sums(rgb))
