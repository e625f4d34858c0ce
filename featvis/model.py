"""The image classifier: networks and the ``ClassifierModule`` LightningModule that trains them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from featvis.colour import ColourTransform


def _conv_bn(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False))
    ]
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))
    layers += [("bn", nn.BatchNorm2d(out_channels)), ("act", nn.GELU())]
    return nn.Sequential(OrderedDict(layers))


class SpeedNet(nn.Sequential):
    """A fast CIFAR convnet in the style of the CIFAR-10 speed-run networks.

    A 3x3 stem, then one group per width: conv, max-pool, BatchNorm, GELU, then a second conv, BatchNorm, GELU;
    global max-pool and a bias-free linear head whose logits are scaled down (which calibrates them, as in the
    speed runs). Layer names read ``stem``, ``group1.conv1.conv`` ... ``head``.

    Args:
        widths: channels of the stem, then of each group.
        num_classes: number of output logits.
        logit_scale: multiplier of the head's output.
    """

    def __init__(
        self, widths: Sequence[int] = (32, 64, 256, 256), num_classes: int = 10, logit_scale: float = 1 / 9
    ):
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(
                f"widths must list a stem width and at least one group width, got {list(widths)}."
            )
        modules: list[tuple[str, nn.Module]] = [("stem", _conv_bn(3, widths[0], pool=False))]
        for index, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            group = nn.Sequential(
                OrderedDict(
                    [("conv1", _conv_bn(cin, cout, pool=True)), ("conv2", _conv_bn(cout, cout, False))]
                )
            )
            modules.append((f"group{index}", group))
        modules += [
            ("pool", nn.AdaptiveMaxPool2d(1)),
            ("flatten", nn.Flatten()),
            ("head", nn.Linear(widths[-1], num_classes, bias=False)),
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


def build_network(name: str, widths: Sequence[int] | None, num_classes: int) -> nn.Module:
    """Build a network by name (``"speednet"`` or ``"small_cnn"``)."""
    if name == "speednet":
        return SpeedNet(widths or (32, 64, 256, 256), num_classes)
    if name == "small_cnn":
        return SmallCNN(widths or (32, 64, 64), num_classes)
    raise ValueError(f"unknown network {name!r}; choose 'speednet' or 'small_cnn'.")


def warmup_linear_decay(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up from 0 over ``warmup`` steps, then linear decay to ``floor``.

    Args:
        step: the optimiser step, from 0.
        total: number of steps of the whole schedule.
        warmup: number of warm-up steps.
        floor: factor reached at the last step.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * max(0.0, 1 - progress)


class ClassifierModule(L.LightningModule):
    """Trains an image classifier on model-space inputs and keeps the data's colour transform in its checkpoint.

    Args:
        network: ``"speednet"`` (fast speed-run-style convnet, the default) or ``"small_cnn"`` (the recipe's
            three-layer CNN, about 70% accuracy).
        widths: channel widths of the network; None takes the network's defaults.
        num_classes: number of classes.
        lr: peak learning rate (reached after warm-up).
        momentum: SGD momentum (Nesterov).
        weight_decay: L2 weight decay of the conv and linear weights (not of BatchNorm parameters).
        label_smoothing: label smoothing of the cross-entropy loss.
        warmup_fraction: fraction of all training steps spent warming the learning rate up linearly from 0;
            the rest decays it linearly to ``final_lr_fraction * lr``.
        final_lr_fraction: learning rate at the end of training, as a fraction of ``lr``.
        channels_last: keep weights and activations in channels-last memory format (faster convs with bf16).
        flip_tta: in validation and test, average the logits of each image and its mirror image.
        class_names: names of the classes; filled in from the datamodule when it has them.
    """

    def __init__(
        self,
        network: Literal["speednet", "small_cnn"] = "speednet",
        widths: list[int] | None = None,
        num_classes: int = 10,
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.2,
        warmup_fraction: float = 0.2,
        final_lr_fraction: float = 0.0,
        channels_last: bool = True,
        flip_tta: bool = True,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}.")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}.")
        self.save_hyperparameters()
        self.net = build_network(network, widths, num_classes)
        # The colour transform of the training data travels with the weights, so a checkpoint alone can map
        # images to model space and back.
        self.colour = ColourTransform.identity()
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        colour = getattr(datamodule, "colour", None)
        if stage == "fit" and isinstance(colour, ColourTransform):
            self.colour.load_state_dict(colour.state_dict())
        classes = getattr(datamodule, "classes", None)
        if classes and len(classes) == self.hparams.num_classes and self.hparams.class_names is None:
            self.class_names = list(classes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = list(self.class_names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))

    def _step(self, batch: tuple[Tensor, Tensor], metric: MulticlassAccuracy) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        if self.hparams.flip_tta and not self.training:
            logits = (logits + self(images.flip(3))) / 2
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        metric.update(logits.detach(), labels)
        return loss, logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch, self.train_acc)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, _ = self._step(batch, self.val_acc)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, self.test_acc)
        self.log("test/acc", self.test_acc, on_epoch=True)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for param in self.net.parameters():
            (decay if param.ndim > 1 else no_decay).append(param)
        optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            nesterov=True,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_fraction * total)
        floor = self.hparams.final_lr_fraction
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_linear_decay(step, total, warmup, floor)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_classifier(checkpoint_path: str, map_location: str | torch.device = "cpu") -> ClassifierModule:
    """Load a ClassifierModule checkpoint in eval mode, with its colour transform and class names.

    Args:
        checkpoint_path: path to a ``.ckpt`` file written by Lightning.
        map_location: device to load the weights onto.
    """
    module = ClassifierModule.load_from_checkpoint(checkpoint_path, map_location=map_location)
    return module.eval()


__all__ = ["ClassifierModule", "SmallCNN", "SpeedNet", "build_network", "load_classifier"]
