"""The image classifier: networks and the ``ClassifierModule`` LightningModule that trains them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from featvis.colour import ColourTransform
from featvis.networks import PatchWhitening, build_network

TTAMode = Literal["none", "flip", "flip_translate"]
TTA_MODES: tuple[str, ...] = get_args(TTAMode)
#: Forward passes per image of each test-time augmentation; accuracy names carry it (``val/acc_1view``).
TTA_VIEWS: dict[str, int] = {"none": 1, "flip": 2, "flip_translate": 6}


def accuracy_name(split: str, tta: str) -> str:
    """The logged name of the accuracy of ``split`` under test-time augmentation ``tta``, e.g. ``val/acc_1view``."""
    return f"{split}/acc_{TTA_VIEWS[tta]}view"


def _check_tta(name: str, mode: object) -> None:
    if mode not in TTA_MODES:
        raise ValueError(f"{name} must be 'none', 'flip' or 'flip_translate', got {mode!r}.")


def warmup_linear_decay(step: int, total: int, warmup: int, floor: float = 0.0, start: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up from ``start`` over ``warmup`` steps, then linear decay to ``floor``.

    Args:
        step: the optimiser step, from 0.
        total: number of steps of the whole schedule.
        warmup: number of warm-up steps.
        floor: factor reached at the last step.
        start: factor at the first step of the warm-up.
    """
    if step < warmup:
        return start + (1 - start) * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * max(0.0, 1 - progress)


class Lookahead:
    """Lookahead averaging of the weights, as in the airbench speed runs.

    Every ``every`` optimiser steps the average moves towards the weights by ``1 - decay`` and the weights are
    set to the average; ``decay = base * (step / total) ** 3`` grows from 0 (no averaging early, when the
    weights move fast) to ``base`` at the end. The last step sets the weights to the average. Every floating
    tensor of the state dict takes part, BatchNorm running statistics included.

    Args:
        every: optimiser steps between updates.
        base: decay at the last step (airbench: ``0.95 ** 5``).
    """

    def __init__(self, every: int = 5, base: float = 0.95**5) -> None:
        self.every, self.base = every, base
        self.average: dict[str, Tensor] | None = None
        self._last_step = -1  # with gradient accumulation several batches end on one optimiser step

    def decay(self, step: int, total: int) -> float:
        """The decay of the update at optimiser step ``step`` (from 1) of ``total``."""
        return self.base * (min(step, total) / max(1, total)) ** 3

    @torch.no_grad()
    def step(self, net: nn.Module, step: int, total: int) -> None:
        """Update after optimiser step ``step`` (counted from 1): average every ``every`` steps, sync at the end."""
        if step == self._last_step:
            return
        self._last_step = step
        update, last = step % self.every == 0, step >= total
        if self.average is not None and not (update or last):
            return  # most steps: no walk over the state dict
        state = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
        if self.average is None:  # the first step's weights start the average
            self.average = {k: v.detach().clone() for k, v in state.items()}
        # A restored average may sit on another device than the weights (checkpoints load to the CPU).
        self.average = {k: v.to(state[k]) for k, v in self.average.items()}
        decay = self.decay(step, total) if update else 1.0
        for key, value in state.items():
            if update:
                self.average[key].lerp_(value, 1 - decay)
            if update or last:
                value.copy_(self.average[key])


class ClassifierModule(L.LightningModule):
    """Trains an image classifier on model-space inputs and keeps the data's colour transform in its checkpoint.

    Args:
        network: ``"speednet"`` (fast speed-run-style convnet with a patch-whitening stem, the default) or
            ``"small_cnn"`` (the recipe's three-layer CNN, about 70% accuracy).
        widths: channel widths of the network; None takes the network's defaults.
        num_classes: number of classes.
        lr: peak learning rate (reached after warm-up).
        momentum: SGD momentum (Nesterov).
        weight_decay: L2 weight decay (SGD's coupled form) of every trainable parameter.
        bias_lr_scale: BatchNorm biases train with ``lr * bias_lr_scale`` and ``weight_decay / bias_lr_scale``
            (the same decay per step); speed-run networks freeze the BatchNorm scales and use 64.
        label_smoothing: label smoothing of the cross-entropy loss.
        warmup_fraction: fraction of all training steps spent warming the learning rate up linearly from
            ``initial_lr_fraction * lr``; the rest decays it linearly to ``final_lr_fraction * lr``.
        initial_lr_fraction: learning rate at the first step, as a fraction of ``lr``.
        final_lr_fraction: learning rate at the end of training, as a fraction of ``lr``.
        batchnorm_momentum: SpeedNet's BatchNorm momentum, PyTorch's convention (weight of the newest batch).
        lookahead: average the weights as the speed runs do (see :class:`Lookahead`); the final weights are the
            average.
        stem_bias_epochs: train the whitening stem's bias only in the first this many epochs (the speed runs
            use 3), then freeze it; None trains it throughout.
        channels_last: keep weights and activations in channels-last memory format (faster convs with bf16).
        tta: test-time augmentation of ``test`` (``test/acc``), ``predict`` and the end of fit: ``"none"``;
            ``"flip"`` averages the logits of each image and its mirror image; ``"flip_translate"`` also averages
            mirrored views shifted by one pixel (six forward passes, about 0.2 points more accurate).
        val_tta: test-time augmentation of the per-epoch validation, logged as ``val/acc_<n>view`` with ``n`` its
            forward passes per image (1, 2 or 6); None uses ``tta``. The default ``"none"`` (``val/acc_1view``)
            keeps validation at a sixth of the 6-view cost. ``val/loss`` is always the loss of the plain (1-view)
            logits. The validation that ends fit (at ``max_epochs`` or ``max_steps``) also evaluates ``tta`` on
            the same batches, from the plain view already computed, and logs it once: as ``test/acc`` when the
            validation split is the test split (a datamodule with ``val_is_test`` true, such as
            ``CIFARDataModule`` with ``val_size`` 0, the default), else as ``val/acc_<n>view``. A fit ended by
            early stopping or ``max_time`` does not log it; run ``featvis test`` for that number.
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
        bias_lr_scale: float = 1.0,
        label_smoothing: float = 0.2,
        warmup_fraction: float = 0.2,
        initial_lr_fraction: float = 0.0,
        final_lr_fraction: float = 0.0,
        batchnorm_momentum: float = 0.1,
        lookahead: bool = False,
        stem_bias_epochs: int | None = None,
        channels_last: bool = True,
        tta: TTAMode = "flip",
        val_tta: TTAMode | None = "none",
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}.")
        if bias_lr_scale <= 0:
            raise ValueError(f"bias_lr_scale must be positive, got {bias_lr_scale}.")
        _check_tta("tta", tta)
        if val_tta is not None:
            _check_tta("val_tta", val_tta)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        if not 0 < batchnorm_momentum <= 1:
            raise ValueError(f"batchnorm_momentum must lie in (0, 1], got {batchnorm_momentum}.")
        if stem_bias_epochs is not None and stem_bias_epochs < 0:
            raise ValueError(f"stem_bias_epochs must be >= 0 or null, got {stem_bias_epochs}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}.")
        self.save_hyperparameters()
        self.net = build_network(network, widths, num_classes, batchnorm_momentum)
        self.lookahead = Lookahead() if lookahead else None
        # The colour transform of the training data travels with the weights, so a checkpoint alone can map
        # images to model space and back.
        self.colour = ColourTransform.identity()
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # The full-`tta` accuracy of the validation that ends fit, and its logged name (None in other passes).
        self.final_acc = MulticlassAccuracy(num_classes, average="micro")
        self._final_name: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        colour = getattr(datamodule, "colour", None)
        if stage == "fit" and isinstance(colour, ColourTransform):
            self.colour.load_state_dict(colour.state_dict())
        classes = getattr(datamodule, "classes", None)
        if classes and len(classes) == self.hparams["num_classes"] and self.hparams["class_names"] is None:
            self.class_names = list(classes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = list(self.class_names)
        if self.lookahead is not None and self.lookahead.average is not None:
            checkpoint["lookahead"] = (
                self.lookahead.average
            )  # a resumed run keeps averaging where it left off

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))
        if self.lookahead is not None and "lookahead" in checkpoint:
            self.lookahead.average = {k: v.clone() for k, v in checkpoint["lookahead"].items()}

    def _views(self, images: Tensor, tta: str, plain: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(logits of the plain view, logits averaged over the views of tta)``; ``plain`` reuses the first."""
        plain = self(images) if plain is None else plain
        if tta == "none":
            return plain, plain
        logits = (plain + self(images.flip(3))) / 2
        if tta == "flip_translate":
            height, width = images.shape[-2:]
            padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
            shifted = [padded[..., :height, :width], padded[..., 2:, 2:]]
            mirrored = [(self(view) + self(view.flip(3))) / 2 for view in shifted]
            logits = (logits + (mirrored[0] + mirrored[1]) / 2) / 2
        return plain, logits

    def predict_logits(self, images: Tensor, tta: str | None = None) -> Tensor:
        """Logits averaged over the views of a test-time augmentation.

        Args:
            images: model-space images ``(N, C, H, W)``.
            tta: ``"none"``, ``"flip"`` or ``"flip_translate"``; None uses the configured ``tta``.
        """
        tta = self.hparams["tta"] if tta is None else tta
        _check_tta("tta", tta)
        return self._views(images, tta)[1]

    def on_train_batch_start(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # The whitening stem is fitted once, from the first (augmented, model-space) training batch; a resumed
        # run restores it from the checkpoint instead.
        stem = getattr(self.net, "stem", None)
        if isinstance(stem, PatchWhitening) and not bool(stem.fitted):
            stem.fit(batch[0].float())

    def on_train_epoch_start(self) -> None:
        stem = getattr(self.net, "stem", None)
        epochs = self.hparams["stem_bias_epochs"]
        if isinstance(stem, PatchWhitening) and epochs is not None and stem.conv.bias is not None:
            # A frozen parameter gets no gradient, and SGD skips parameters without one (momentum included).
            stem.conv.bias.requires_grad_(self.current_epoch < epochs)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.lookahead is not None:
            # Here and not in on_train_batch_end: Lightning runs the callbacks' batch-end hooks first, so a
            # checkpoint saved every n steps (ModelCheckpoint(every_n_train_steps=n)) would hold the weights
            # before this step's average, and the final one the weights before the final sync. The trainer counts
            # this step as done only after this hook returns, hence + 1.
            total = max(1, int(self.trainer.estimated_stepping_batches))
            self.lookahead.step(self.net, self.trainer.global_step + 1, total)

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams["label_smoothing"])

    def _val_tta(self) -> str:
        val_tta = self.hparams["val_tta"]
        return self.hparams["tta"] if val_tta is None else val_tta

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self._loss(logits, labels)
        self.train_acc.update(logits.detach(), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._final_name = self._end_of_fit_name()

    def _end_of_fit_name(self) -> str | None:
        """The name of the full-``tta`` accuracy if this validation ends fit (see ``val_tta``), else None."""
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return None
        progress = trainer.fit_loop.epoch_loop.batch_progress
        epoch_over = progress.is_last_batch or progress.current.ready >= trainer.num_training_batches
        last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        steps_done = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        if not (steps_done or (last_epoch and epoch_over)):
            return None
        if getattr(getattr(trainer, "datamodule", None), "val_is_test", False):
            return "test/acc"
        tta = self.hparams["tta"]
        return None if tta == self._val_tta() else accuracy_name("val", tta)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        tta, val_tta = self.hparams["tta"], self._val_tta()
        plain, logits = self._views(images, val_tta)
        self.val_acc.update(logits, labels)
        self.log("val/loss", self._loss(plain, labels), on_epoch=True, prog_bar=True)
        self.log(accuracy_name("val", val_tta), self.val_acc, on_epoch=True, prog_bar=True)
        if self._final_name is not None:
            full = logits if tta == val_tta else self._views(images, tta, plain)[1]
            self.final_acc.update(full, labels)
            self.log(self._final_name, self.final_acc, on_epoch=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.test_acc.update(self.predict_logits(images), labels)
        self.log("test/acc", self.test_acc, on_epoch=True)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.predict_logits(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp = self.hparams
        norm_biases = [
            m.bias
            for m in self.net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None and m.bias.requires_grad
        ]
        taken = {id(p) for p in norm_biases}
        stem = getattr(self.net, "stem", None)
        # The stem bias may be frozen for now (stem_bias_epochs) but belongs in the optimiser's groups, so the
        # groups are the same however late configure_optimizers runs (a resumed run's optimiser state matches).
        stem_bias = stem.conv.bias if isinstance(stem, PatchWhitening) else None
        others = [
            p for p in self.net.parameters() if (p.requires_grad or p is stem_bias) and id(p) not in taken
        ]
        groups = [{"params": others, "lr": hp["lr"], "weight_decay": hp["weight_decay"]}]
        if norm_biases:
            groups.append(
                {
                    "params": norm_biases,
                    "lr": hp["lr"] * hp["bias_lr_scale"],
                    "weight_decay": hp["weight_decay"] / hp["bias_lr_scale"],
                }
            )
        optimizer = torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], nesterov=True)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp["warmup_fraction"] * total)
        floor, start = hp["final_lr_fraction"], hp["initial_lr_fraction"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_linear_decay(step, total, warmup, floor, start)
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


__all__ = [
    "TTA_VIEWS",
    "ClassifierModule",
    "Lookahead",
    "accuracy_name",
    "load_classifier",
]
