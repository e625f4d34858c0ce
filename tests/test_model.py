"""Networks and the ``ClassifierModule``: logged metrics, checkpoint round trip, hyperparameter checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import write_cifar_folder
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from featvis.colour import ColourTransform
from featvis.data import CIFARDataModule
from featvis.model import ClassifierModule, SmallCNN, SpeedNet, build_network, load_classifier

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY_WIDTHS = [8, 16, 16, 16]


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
    net = SpeedNet(widths=(8, 16, 32), num_classes=7)
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
        ({"widths": [8]}, "widths"),
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
    model = ClassifierModule(widths=[16, 32, 32, 32], lr=0.2, label_smoothing=0.0)
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
