"""Networks and the ``ClassifierModule``: logged metrics, checkpoint round trip, hyperparameter checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import write_cifar_folder
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from featvis.colour import ColourTransform
from featvis.data import CIFARDataModule
from featvis.model import ClassifierModule, PatchWhitening, SmallCNN, SpeedNet, build_network, load_classifier

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY_WIDTHS = [8, 16, 16]


@pytest.fixture(autouse=True)
def single_thread() -> Any:
    """Tiny networks gain nothing from intra-op threads, and on a busy CPU the thread pool's spinning makes
    each step up to 100x slower; one thread keeps these tests fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.history.append(dict(metrics))

    def names(self) -> set[str]:
        """Every metric name logged so far, without Lightning's own ``epoch`` counter."""
        return {key for entry in self.history for key in entry} - {"epoch"}


def test_speednet_layers_and_output() -> None:
    net = SpeedNet(widths=(8, 16), num_classes=7)
    names = {name for name, _ in net.named_modules()}
    assert {"stem.conv", "group1.conv1.conv", "group1.conv2.conv", "group2.conv1.conv", "head"} <= names
    assert "group3" not in names
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    # The head's logits are scaled down by logit_scale.
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    unscaled = torch.nn.Sequential(*list(net.children()))(x)
    torch.testing.assert_close(net(x), unscaled / 9)


def test_small_cnn_and_build_network() -> None:
    assert SmallCNN()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(build_network("small_cnn", None, 10), SmallCNN)
    speednet = build_network("speednet", None, 10)
    assert isinstance(speednet, SpeedNet)
    assert speednet.head.in_features == 256
    with pytest.raises(ValueError, match="unknown network"):
        build_network("resnet", None, 10)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"warmup_fraction": -0.1}, "warmup_fraction"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"class_names": ["a", "b"]}, "class_names"),
        ({"network": "vgg"}, "unknown network"),
        ({"widths": [0, 8]}, "widths"),
        ({"bias_lr_scale": 0.0}, "bias_lr_scale"),
        ({"tta": "crop"}, "tta"),
        ({"val_tta": "crop"}, "val_tta"),
        ({"network": "small_cnn", "widths": [8, 8]}, "widths"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ClassifierModule(**kwargs)


def _trainer(tmp_path: Path, logger: Logger, epochs: int) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _accuracy(module: ClassifierModule, datamodule: CIFARDataModule) -> float:
    """Accuracy on the validation split, with the flip test-time augmentation, computed by hand."""
    was_training = module.training
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in datamodule.val_dataloader():
            inputs = datamodule.colour.to_model(images.float() / 255)
            logits = (module(inputs) + module(inputs.flip(3))) / 2
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += labels.numel()
    module.train(was_training)
    return correct / total


def test_fit_and_test_log_exactly_the_documented_metrics_and_checkpoint_round_trips(
    cifar_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=16, eval_batch_size=32)
    model = ClassifierModule(widths=TINY_WIDTHS, lr=0.2)
    logger = RecordingLogger()
    trainer = _trainer(tmp_path, logger, epochs=2)

    trainer.fit(model, datamodule=datamodule)

    assert logger.names() == {"train/loss", "train/acc", "val/loss", "val/acc"}
    assert set(trainer.callback_metrics) == {"train/loss", "train/acc", "val/loss", "val/acc"}
    train_losses = [entry["train/loss"] for entry in logger.history if "train/loss" in entry]
    assert len(train_losses) == 2 * (100 // 16)  # one per step, every step (log_every_n_steps=1)
    assert all(math.isfinite(v) and v > 0 for v in train_losses)
    val_accs = [entry["val/acc"] for entry in logger.history if "val/acc" in entry]
    assert len(val_accs) == 2  # once per epoch
    assert all(0.0 <= v <= 1.0 for v in val_accs)
    assert 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0
    # val/acc is the accuracy (with flip TTA) of the final weights on the validation split.
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(_accuracy(model, datamodule), abs=1e-6)

    # The module took the datamodule's colour transform and class names.
    assert torch.equal(model.colour.matrix, datamodule.colour.matrix)
    assert model.class_names == CLASS_NAMES

    test_logger_start = len(logger.history)
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    test_names = {key for entry in logger.history[test_logger_start:] for key in entry} - {"epoch"}
    assert test_names == {"test/acc"}
    assert set(results[0]) == {"test/acc"}
    # Validation runs on the test split by default, so test/acc equals the last val/acc.
    assert results[0]["test/acc"] == pytest.approx(val_accs[-1], abs=1e-6)

    checkpoint_path = tmp_path / "ckpt" / "last.ckpt"
    assert checkpoint_path.is_file()
    raw = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    assert raw["class_names"] == CLASS_NAMES
    loaded = load_classifier(str(checkpoint_path))
    assert not loaded.training
    assert loaded.class_names == CLASS_NAMES
    for name in ("mean", "matrix", "inverse"):
        assert torch.equal(getattr(loaded.colour, name), getattr(datamodule.colour, name))
    assert not torch.equal(loaded.colour.matrix, ColourTransform.identity().matrix)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.hparams.widths == TINY_WIDTHS


def test_training_learns_the_synthetic_classes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_cifar_folder(data_dir, per_batch=100, seed=0)
    torch.manual_seed(0)
    datamodule = CIFARDataModule(data_dir=str(data_dir), batch_size=25, eval_batch_size=100)
    model = ClassifierModule(widths=[16, 32, 32], lr=0.2, label_smoothing=0.0)
    trainer = _trainer(tmp_path, RecordingLogger(), epochs=5)
    datamodule.setup("fit")
    before = _accuracy(model, datamodule)
    trainer.fit(model, datamodule=datamodule)
    after = float(trainer.callback_metrics["val/acc"])
    # Each synthetic class is one colour plus noise: far above chance (0.1) after a few epochs.
    assert after >= 0.5, (before, after)
    assert after > before + 0.3


def test_class_names_hyperparameter_wins_over_datamodule(cifar_dir: Path, tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(10)]
    model = ClassifierModule(widths=TINY_WIDTHS, class_names=names)
    assert model.class_names == names
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=50)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    assert model.class_names == names
    assert torch.equal(model.colour.mean, datamodule.colour.mean)


def test_patch_whitening_fit_whitens_patches() -> None:
    """After fit, the first half of the stem's outputs (before GELU) have identity covariance on the data."""
    generator = torch.Generator().manual_seed(0)
    # Smooth, correlated images: neighbouring pixels and channels share most of their variance.
    base = torch.randn(64, 1, 18, 18, generator=generator)
    images = torch.nn.functional.avg_pool2d(base, 3, stride=1) * torch.tensor([1.0, 0.8, 0.5]).view(
        1, 3, 1, 1
    )
    images = images + 0.1 * torch.randn(images.shape, generator=generator)
    stem = PatchWhitening(3, kernel_size=2, eps=0.0)
    assert not bool(stem.fitted)
    stem.fit(images)
    assert bool(stem.fitted) and not stem.conv.weight.requires_grad
    with torch.no_grad():
        outputs = stem.conv(images) - stem.conv.bias.view(1, -1, 1, 1)
    half = outputs[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    covariance = half @ half.T / half.shape[1]
    torch.testing.assert_close(covariance, torch.eye(12), atol=2e-3, rtol=0)
    # The second half are the same filters with the opposite sign.
    torch.testing.assert_close(stem.conv.weight[12:], -stem.conv.weight[:12])
    with pytest.raises(ValueError, match=r"\(N, 3, H >= 2, W >= 2\)"):
        stem.fit(torch.zeros(2, 1, 8, 8))


def test_stem_is_fitted_on_the_first_training_batch_and_kept_on_resume(
    cifar_dir: Path, tmp_path: Path
) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=20, eval_batch_size=50)
    model = ClassifierModule(widths=TINY_WIDTHS, lr=0.05)
    initial = model.net.stem.conv.weight.clone()
    trainer = _trainer(tmp_path, RecordingLogger(), epochs=1)
    trainer.fit(model, datamodule=datamodule)
    fitted = model.net.stem.conv.weight.clone()
    assert bool(model.net.stem.fitted) and not torch.equal(fitted, initial)

    # Resuming restores the fitted filters from the checkpoint instead of refitting them on another batch.
    resumed = ClassifierModule(widths=TINY_WIDTHS, lr=0.05)
    trainer = _trainer(tmp_path, RecordingLogger(), epochs=2)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(resumed.net.stem.conv.weight, fitted)


def test_batchnorm_biases_get_the_scaled_learning_rate_and_matching_decay(tmp_path: Path) -> None:
    model = ClassifierModule(widths=TINY_WIDTHS, lr=0.5, weight_decay=1e-3, bias_lr_scale=64.0)
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=10, logger=False, enable_progress_bar=False)
    model.trainer = trainer
    optimizer = model.configure_optimizers()["optimizer"]
    others, biases = optimizer.param_groups
    bn_biases = {id(m.bias) for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == bn_biases
    # LambdaLR keeps the peak rate as initial_lr (lr itself already carries the warm-up factor).
    assert biases["initial_lr"] == pytest.approx(32.0) and biases["weight_decay"] == pytest.approx(1e-3 / 64)
    assert others["initial_lr"] == pytest.approx(0.5) and others["weight_decay"] == pytest.approx(1e-3)
    # Frozen tensors (the whitening filters, BatchNorm scales) are not optimised at all.
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.net.stem.conv.weight) not in optimised
    assert all(
        id(m.weight) not in optimised for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert optimised == {id(p) for p in model.net.parameters() if p.requires_grad}


@pytest.mark.parametrize("tta", ["none", "flip", "flip_translate"])
def test_test_time_augmentation_averages_the_documented_views(tta: str) -> None:
    model = ClassifierModule(widths=TINY_WIDTHS, tta=tta, channels_last=False).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = model.predict_logits(images)
        padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
        views = {
            "none": [images],
            "flip": [images, images.flip(3)],
        }
        if tta == "flip_translate":
            up_left, down_right = padded[..., :32, :32], padded[..., 2:, 2:]
            plain = (model(images) + model(images.flip(3))) / 2
            shifted = [(model(v) + model(v.flip(3))) / 2 for v in (up_left, down_right)]
            expected = (plain + (shifted[0] + shifted[1]) / 2) / 2
        else:
            expected = torch.stack([model(v) for v in views[tta]]).mean(0)
    torch.testing.assert_close(got, expected)
    if tta != "none":
        assert not torch.allclose(got, model(images))


def test_validation_uses_val_tta_while_test_keeps_tta() -> None:
    model = ClassifierModule(
        widths=TINY_WIDTHS, tta="flip_translate", val_tta="none", channels_last=False
    ).eval()
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    modes: list[str | None] = []
    configured = model.predict_logits

    def recording(batch_images: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        modes.append(tta)
        return configured(batch_images, tta)

    model.predict_logits = recording  # type: ignore[method-assign]
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):
        model.validation_step((images, labels), 0)
        model.test_step((images, labels), 0)
        plain = model(images).argmax(1)
        full = model.predict_logits(images, "flip_translate").argmax(1)
    assert modes[:2] == ["none", None]
    assert model.val_acc.compute().item() == pytest.approx((plain == labels).float().mean().item())
    assert model.test_acc.compute().item() == pytest.approx((full == labels).float().mean().item())
    with pytest.raises(ValueError, match="tta"):
        configured(images, "mirror")
