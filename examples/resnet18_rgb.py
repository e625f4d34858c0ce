"""FeatureVisCallback on a model that knows nothing about featvis: a torchvision ResNet-18 on normalised RGB.

The LightningModule below is ordinary: it takes ``(rgb - mean) / std`` normalised 64-px images and has no
``colour`` transform or class names of its own. The callback is used unchanged; it is told the normalisation with
``normalization_mean``/``normalization_std``, reads the image size from the module's ``example_input_array`` and
the class names from the datamodule's ``classes``. The data is a small synthetic set (a coloured shape per class
on a noisy background), so the example runs anywhere::

    python examples/resnet18_rgb.py --epochs 3
    tensorboard --logdir lightning_logs --samples_per_plugin images=1000
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from featvis import FeatureVisCallback, RenderConfig

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SHAPES = ["square", "disc", "cross", "bar", "ring", "triangle", "checker", "dot", "frame", "stripe"]


def resnet18_small(num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem, for small images (64 px become 32-px maps in layer1)."""
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    return net


class ResNetRGB(L.LightningModule):
    """ResNet-18 classifier on ``(rgb - MEAN) / STD`` normalised images.

    Args:
        num_classes: number of classes.
        image_size: side length of the input images.
        lr: SGD learning rate.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 64, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = resnet18_small(num_classes)
        self.example_input_array = torch.zeros(1, 3, image_size, image_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)


def synthetic_shapes(count: int, num_classes: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` RGB images in [0, 1] of ``num_classes`` shape classes, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (count,), generator=g)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = (xs**2 + ys**2).sqrt()
    masks = [
        (xs.abs() < 0.5) & (ys.abs() < 0.5),
        r < 0.5,
        (xs.abs() < 0.15) | (ys.abs() < 0.15),
        ys.abs() < 0.2,
        (r > 0.35) & (r < 0.6),
        (ys > -0.5) & (ys < 0.5) & (xs.abs() < (0.5 - ys) / 2),
        ((xs * 4).floor() + (ys * 4).floor()) % 2 == 0,
        r < 0.2,
        (xs.abs().maximum(ys.abs()) > 0.6) & (xs.abs().maximum(ys.abs()) < 0.8),
        ((xs + ys) * 4).floor() % 2 == 0,
    ]
    colours = torch.rand(num_classes, 3, generator=g)
    images = 0.5 + 0.1 * torch.randn(count, 3, size, size, generator=g)
    for i, label in enumerate(labels.tolist()):
        mask = masks[label % len(masks)]
        images[i][:, mask] = colours[label].view(3, 1) + 0.05 * torch.randn(3, int(mask.sum()), generator=g)
    return images.clamp(0, 1), labels


class ShapesData(L.LightningDataModule):
    """Synthetic shapes, normalised with ``MEAN``/``STD``; ``classes`` names them (as torchvision datasets do).

    Args:
        num_classes: number of shape classes (at most 10).
        image_size: side length of the images.
        samples: training images.
        batch_size: batch size.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 64, samples: int = 512, batch_size: int = 32):
        super().__init__()
        self.classes = SHAPES[:num_classes]
        # (Named ``size``, not ``image_size``, so the callback takes the size from the model's example input.)
        self.num_classes, self.size, self.samples, self.batch_size = (
            num_classes,
            image_size,
            samples,
            batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        images, labels = synthetic_shapes(self.samples, self.num_classes, self.size)
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        return DataLoader(
            TensorDataset((images - mean) / std, labels), batch_size=self.batch_size, shuffle=True
        )


def main(argv: Sequence[str] | None = None) -> L.Trainer:
    """Train the ResNet-18 with the callback; returns the finished trainer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit-train-batches", type=int, default=None)
    parser.add_argument("--render-steps", type=int, default=64)
    parser.add_argument("--images-per-target", type=int, default=2)
    parser.add_argument("--no-metrics", action="store_true", help="skip the quality scalars (faster)")
    parser.add_argument("--root", default="lightning_logs", help="TensorBoard save_dir")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    callback = FeatureVisCallback(
        normalization_mean=MEAN,
        normalization_std=STD,
        config=RenderConfig(steps=args.render_steps, images_per_target=args.images_per_target),
        metrics=not args.no_metrics,
        # A channel callback would look the same: FeatureVisCallback(layer="net.layer3.0.conv1", ...).
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=L.pytorch.loggers.TensorBoardLogger(args.root, name="resnet18_rgb"),
        callbacks=[callback],
        limit_train_batches=args.limit_train_batches,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    data = ShapesData(args.classes, args.image_size, args.samples, args.batch_size)
    trainer.fit(ResNetRGB(args.classes, args.image_size), datamodule=data)
    return trainer


if __name__ == "__main__":
    main()
