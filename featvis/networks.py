"""The image classifiers ``ClassifierModule`` trains: the speed-run ``SpeedNet`` (with its ``PatchWhitening`` stem)
and the recipe's ``SmallCNN``, built by name with :func:`build_network`. Pure PyTorch."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn(in_channels: int, out_channels: int, pool: bool, batchnorm_momentum: float) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    # Identity (dirac) start for the first in_channels filters: each group begins close to passing its input
    # through, which trains faster in short schedules.
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(in_channels, out_channels)])
    layers: list[tuple[str, nn.Module]] = [("conv", conv)]
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))
    # BatchNorm without a learnable scale: the following conv can absorb any scale, and a frozen scale lets
    # the biases take a much larger learning rate (ClassifierModule's bias_lr_scale).
    norm = nn.BatchNorm2d(out_channels, eps=1e-12, momentum=batchnorm_momentum)
    norm.weight.requires_grad_(False)
    layers += [("bn", norm), ("act", nn.GELU())]
    return nn.Sequential(OrderedDict(layers))


class PatchWhitening(nn.Module):
    """First layer: a frozen ``k x k`` conv that whitens image patches, with a learnable bias, then GELU.

    Its filters are the eigenvectors of the covariance of the training images' ``k x k`` patches, each divided by
    the square root of its eigenvalue, once with each sign (``2 * channels * k * k`` outputs). They are fitted
    from data with :meth:`fit` (``ClassifierModule`` does this on the first training batch) and then stay fixed;
    the ``fitted`` buffer travels in checkpoints, so a resumed run keeps them.

    Args:
        in_channels: image channels.
        kernel_size: patch size ``k``.
        eps: added to the eigenvalues before the square root, so near-constant directions stay bounded.
    """

    fitted: Tensor  # registered buffer

    def __init__(self, in_channels: int = 3, kernel_size: int = 2, eps: float = 5e-4) -> None:
        super().__init__()
        self.eps = eps
        self.conv = nn.Conv2d(in_channels, 2 * in_channels * kernel_size**2, kernel_size, bias=True)
        self.conv.weight.requires_grad_(False)
        assert self.conv.bias is not None  # built with bias=True
        nn.init.zeros_(self.conv.bias)
        self.act = nn.GELU()
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, images: Tensor) -> None:
        """Set the filters from a batch of (model-space) training images of shape ``(N, C, H, W)``."""
        channels, k = self.conv.in_channels, self.conv.kernel_size[0]
        if images.ndim != 4 or images.shape[1] != channels or min(images.shape[2:]) < k:
            raise ValueError(
                f"PatchWhitening.fit needs images of shape (N, {channels}, H >= {k}, W >= {k}), "
                f"got {tuple(images.shape)}."
            )
        # unfold orders each patch as (channel, row, col), the same layout as a conv filter.
        patches = F.unfold(images.detach().double(), k).transpose(1, 2).reshape(-1, channels * k * k)
        covariance = patches.T @ patches / patches.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / (eigenvalues.clamp_min(0) + self.eps).sqrt()[:, None]).flip(0)
        filters = filters.reshape(-1, channels, k, k)
        weight = torch.cat([filters, -filters]).to(self.conv.weight.dtype)
        self.conv.weight.copy_(weight.to(memory_format=torch.channels_last))
        self.fitted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class SpeedNet(nn.Sequential):
    """A fast CIFAR convnet in the style of the CIFAR-10 speed-run networks (airbench).

    A frozen 2x2 patch-whitening stem, then one group per width: conv, max-pool, BatchNorm, GELU, then a second
    conv, BatchNorm, GELU; global max-pool and a bias-free linear head whose logits are scaled down (which
    calibrates them, as in the speed runs). Convs start near identity. Layer names read ``stem.conv``,
    ``group1.conv1.conv`` ... ``head``.

    Args:
        widths: channels of each conv group.
        num_classes: number of output logits.
        logit_scale: multiplier of the head's output.
        whitening_kernel: patch size of the whitening stem.
        batchnorm_momentum: PyTorch-style BatchNorm momentum (weight of the newest batch in the running stats).
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 256, 256),
        num_classes: int = 10,
        logit_scale: float = 1 / 9,
        whitening_kernel: int = 2,
        batchnorm_momentum: float = 0.1,
    ):
        if len(widths) < 1 or any(w < 1 for w in widths):
            raise ValueError(f"widths must list at least one positive group width, got {list(widths)}.")
        stem = PatchWhitening(3, whitening_kernel)
        modules: list[tuple[str, nn.Module]] = [("stem", stem)]
        previous = stem.conv.out_channels
        for index, width in enumerate(widths, start=1):
            group = nn.Sequential(
                OrderedDict(
                    [
                        ("conv1", _conv_bn(previous, width, True, batchnorm_momentum)),
                        ("conv2", _conv_bn(width, width, False, batchnorm_momentum)),
                    ]
                )
            )
            modules.append((f"group{index}", group))
            previous = width
        modules += [
            ("pool", nn.AdaptiveMaxPool2d(1)),
            ("flatten", nn.Flatten()),
            ("head", nn.Linear(previous, num_classes, bias=False)),
        ]
        super().__init__(OrderedDict(modules))
        self.logit_scale = logit_scale

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.logit_scale


class SmallCNN(nn.Sequential):
    """The feature-visualisation recipe's small CNN: three conv layers, roughly 70% CIFAR-10 accuracy.

    Args:
        widths: channels of the three conv layers.
        num_classes: number of output logits.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 64), num_classes: int = 10):
        if len(widths) != 3:
            raise ValueError(f"SmallCNN has three conv layers, so widths needs 3 values, got {list(widths)}.")
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, widths[0], 3, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(widths[0], widths[1], 3, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("conv3", nn.Conv2d(widths[1], widths[2], 3, padding=1)),
                    ("relu3", nn.ReLU()),
                    ("pool3", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten()),
                    ("head", nn.Linear(widths[2], num_classes)),
                ]
            )
        )


def build_network(
    name: str, widths: Sequence[int] | None, num_classes: int, batchnorm_momentum: float = 0.1
) -> nn.Module:
    """Build a network by name (``"speednet"`` or ``"small_cnn"``); ``batchnorm_momentum`` is SpeedNet's."""
    if name == "speednet":
        return SpeedNet(widths or (64, 256, 256), num_classes, batchnorm_momentum=batchnorm_momentum)
    if name == "small_cnn":
        return SmallCNN(widths or (32, 64, 64), num_classes)
    raise ValueError(f"unknown network {name!r}; choose 'speednet' or 'small_cnn'.")


__all__ = ["PatchWhitening", "SmallCNN", "SpeedNet", "build_network"]
