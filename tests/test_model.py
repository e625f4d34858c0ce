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
from featvis.model import ClassifierModule, Lookahead, load_classifier
from featvis.networks import PatchWhitening, SmallCNN, SpeedNet, build_network

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
        ({"batchnorm_momentum": 0.0}, "batchnorm_momentum"),
        ({"batchnorm_momentum": 1.5}, "batchnorm_momentum"),
        ({"stem_bias_epochs": -1}, "stem_bias_epochs"),
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
    """Accuracy on the validation split, one view per image (no test-time augmentation), computed by hand."""
    was_training = module.training
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in datamodule.val_dataloader():
            inputs = datamodule.colour.to_model(images.float() / 255)
            logits = module(inputs)
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

    names = {"train/loss", "train/acc", "val/loss", "val/acc_1view", "test/acc"}
    assert logger.names() == names
    assert set(trainer.callback_metrics) == names
    train_losses = [entry["train/loss"] for entry in logger.history if "train/loss" in entry]
    assert len(train_losses) == 2 * (100 // 16)  # one per step, every step (log_every_n_steps=1)
    assert all(math.isfinite(v) and v > 0 for v in train_losses)
    val_accs = [entry["val/acc_1view"] for entry in logger.history if "val/acc_1view" in entry]
    assert len(val_accs) == 2  # once per epoch
    assert all(0.0 <= v <= 1.0 for v in val_accs)
    assert 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0
    # val/acc_1view is the plain (no TTA) accuracy of the final weights on the validation split.
    assert float(trainer.callback_metrics["val/acc_1view"]) == pytest.approx(
        _accuracy(model, datamodule), abs=1e-6
    )
    # The end of fit logged the full-TTA test/acc once, with the last validation (which ran on the test split).
    fit_tests = [entry for entry in logger.history if "test/acc" in entry]
    assert len(fit_tests) == 1 and "val/acc_1view" in fit_tests[0] and 0.0 <= fit_tests[0]["test/acc"] <= 1.0

    # The module took the datamodule's colour transform and class names.
    assert torch.equal(model.colour.matrix, datamodule.colour.matrix)
    assert model.class_names == CLASS_NAMES

    test_logger_start = len(logger.history)
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    test_names = {key for entry in logger.history[test_logger_start:] for key in entry} - {"epoch"}
    assert test_names == {"test/acc"}
    assert set(results[0]) == {"test/acc"}
    # The same weights, split and TTA: trainer.test reproduces the test/acc logged at the end of fit.
    assert results[0]["test/acc"] == pytest.approx(fit_tests[0]["test/acc"], abs=1e-6)

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
    after = float(trainer.callback_metrics["val/acc_1view"])
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


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
def test_test_time_augmentation_of_a_uniform_image_equals_its_plain_view(tta: str) -> None:
    """Every mirrored and (reflect-padded) shifted view of a uniform image is that image, so the average of the
    views equals one view; zero padding, or weights that do not sum to one, would change it."""
    model = ClassifierModule(widths=TINY_WIDTHS, tta=tta, channels_last=False).eval()
    generator = torch.Generator().manual_seed(0)
    uniform = torch.randn(4, 3, 1, 1, generator=generator).expand(4, 3, 32, 32).contiguous()
    textured = torch.randn(4, 3, 32, 32, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_logits(uniform), model(uniform))
        assert not torch.allclose(model.predict_logits(textured), model(textured), atol=1e-4)
        assert torch.equal(model.predict_logits(textured, "none"), model(textured))


def test_flip_tta_is_mirror_invariant_and_flip_translate_adds_views() -> None:
    model = ClassifierModule(widths=TINY_WIDTHS, channels_last=False).eval()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # The network itself is not mirror-invariant; its flip-averaged prediction is.
        assert not torch.allclose(model(images.flip(3)), model(images), atol=1e-4)
        flip = model.predict_logits(images, "flip")
        torch.testing.assert_close(model.predict_logits(images.flip(3), "flip"), flip)
        assert not torch.allclose(model.predict_logits(images, "flip_translate"), flip, atol=1e-4)
    with pytest.raises(ValueError, match="tta"):
        model.predict_logits(images, "mirror")


def _count_images(model: ClassifierModule) -> list[tuple[str, int, int]]:
    """``(stage, epoch, images)`` of every forward pass of ``model.net`` while it runs under a trainer."""
    seen: list[tuple[str, int, int]] = []

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        trainer = model.trainer
        seen.append((str(trainer.state.stage.value), trainer.current_epoch, inputs[0].shape[0]))

    model.net.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize(("val_size", "final_name"), [(0, "test/acc"), (40, "val/acc_6view")])
def test_validation_sees_each_image_once_per_epoch_and_the_end_of_fit_six_times(
    cifar_dir: Path, tmp_path: Path, val_size: int, final_name: str
) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=20, eval_batch_size=8, val_size=val_size)
    model = ClassifierModule(widths=TINY_WIDTHS, tta="flip_translate")  # val_tta at its default
    seen = _count_images(model)
    logger = RecordingLogger()
    trainer = _trainer(tmp_path, logger, epochs=3)
    trainer.fit(model, datamodule=datamodule)

    val_images = 20 if val_size == 0 else val_size  # the synthetic test split has 20 images
    per_epoch = [sum(n for stage, e, n in seen if stage == "validate" and e == epoch) for epoch in range(3)]
    assert per_epoch == [val_images, val_images, 6 * val_images]
    assert sum(n for stage, _, n in seen if stage == "sanity_check") == 16  # two batches of 8, one view
    assert sum(n for stage, _, n in seen if stage == "train") == 3 * (100 - val_size)
    assert len([e for e in logger.history if "val/acc_1view" in e]) == 3
    finals = [entry[final_name] for entry in logger.history if final_name in entry]
    assert len(finals) == 1 and 0.0 <= finals[0] <= 1.0
    # Named after the split it ran on: never both names.
    assert logger.names() - {final_name} == {"train/loss", "train/acc", "val/loss", "val/acc_1view"}

    seen.clear()
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert sum(n for stage, _, n in seen if stage == "test") == 6 * 20


class _MirrorSymmetric(torch.nn.Module):
    """A network made mirror-invariant: its logits average those of the image and its mirror image."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.inner(x) + self.inner(x.flip(3))) / 2


def test_end_of_fit_flip_tta_of_a_mirror_invariant_model_equals_its_one_view_accuracy(
    cifar_dir: Path, tmp_path: Path
) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=20, eval_batch_size=8)
    model = ClassifierModule(widths=TINY_WIDTHS, tta="flip", lr=0.05)
    model.net = _MirrorSymmetric(model.net)
    logger = RecordingLogger()
    _trainer(tmp_path, logger, epochs=1).fit(model, datamodule=datamodule)
    (last,) = [entry for entry in logger.history if "test/acc" in entry]
    assert last["test/acc"] == pytest.approx(last["val/acc_1view"], abs=1e-6)
    assert last["val/acc_1view"] == pytest.approx(_accuracy(model, datamodule), abs=1e-6)


def test_batchnorm_momentum_reaches_every_batchnorm_of_speednet() -> None:
    model = ClassifierModule(widths=TINY_WIDTHS, batchnorm_momentum=0.4)
    norms = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(m.momentum == 0.4 for m in norms)


def test_lookahead_lags_a_moving_weight_keeps_a_still_one_and_ends_on_the_average() -> None:
    net = torch.nn.Linear(1, 1)
    lookahead, total = Lookahead(every=5, base=0.9), 40
    path = []
    with torch.no_grad():
        net.weight.fill_(0.0)
        net.bias.fill_(5.0)
        for step in range(1, total + 1):
            net.weight.add_(1.0)  # an optimiser that moves the weight by +1 per step
            lookahead.step(net, step, total)
            path.append(float(net.weight))
            lookahead.step(net, step, total)  # a repeated step (gradient accumulation) is ignored
    assert net.bias.item() == 5.0  # a weight that does not move stays where it is
    # Early updates barely average (decay ~ 0), so the weight follows its optimiser almost exactly ...
    assert path[4] == pytest.approx(5.0, abs=0.01)
    # ... late ones hold it back: it ends behind the 40 raw steps' 40 but ahead of where it stood at step 30.
    assert path[29] < path[-1] < 40.0 - 2.0
    assert float(net.weight) == path[-1] == pytest.approx(float(lookahead.average["weight"]))


def test_stem_bias_trains_only_in_its_first_epochs(cifar_dir: Path, tmp_path: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=20, eval_batch_size=50)
    biases = {}
    for epochs in (1, None):
        torch.manual_seed(0)
        model = ClassifierModule(widths=TINY_WIDTHS, lr=0.05, stem_bias_epochs=epochs)

        class Snapshot(L.Callback):
            def __init__(self) -> None:
                self.seen: list[torch.Tensor] = []

            def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
                self.seen.append(module.net.stem.conv.bias.detach().clone())  # type: ignore[union-attr]

        snapshot = Snapshot()
        trainer = _trainer(tmp_path / str(epochs), RecordingLogger(), epochs=3)
        trainer.callbacks.append(snapshot)
        trainer.fit(model, datamodule=datamodule)
        biases[epochs] = snapshot.seen
    frozen, free = biases[1], biases[None]
    assert frozen[0].abs().sum() > 0  # it trained in epoch 1 ...
    assert torch.equal(frozen[0], frozen[1]) and torch.equal(frozen[1], frozen[2])  # ... and never after
    assert not torch.equal(free[0], free[2])


class _StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.should_stop = True  # an interrupted run: the schedule still spans max_epochs


def test_step_checkpoints_hold_the_lookahead_weights_of_their_step(cifar_dir: Path, tmp_path: Path) -> None:
    """A checkpoint every 5 steps lands on the lookahead's update steps: it must hold the weights after that
    step's averaging (ModelCheckpoint saves in its batch-end hook, which Lightning runs before the module's), and
    the last one the final synced weights, the ones the module ends with."""
    torch.manual_seed(0)
    model = ClassifierModule(widths=TINY_WIDTHS, lr=0.05, lookahead=True)
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[every],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=CIFARDataModule(data_dir=str(cifar_dir), batch_size=20, eval_batch_size=50))
    assert trainer.global_step == 10
    first = torch.load(tmp_path / "ckpt" / "epoch=0-step=5.ckpt", weights_only=False)
    for name, value in first["lookahead"].items():  # step 5 averaged: the weights are the average
        torch.testing.assert_close(first["state_dict"][f"net.{name}"], value, rtol=0, atol=0, msg=name)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 10
    for name, value in model.net.state_dict().items():
        torch.testing.assert_close(last["state_dict"][f"net.{name}"], value, rtol=0, atol=0, msg=name)


def test_lookahead_resumes_exactly_from_its_checkpoint(cifar_dir: Path, tmp_path: Path) -> None:
    """Two epochs straight, and the same two-epoch run stopped after one and resumed, give the same weights: the
    average travels in the checkpoint (without it the resumed run would restart it from its first step)."""

    def datamodule() -> (
        CIFARDataModule
    ):  # a fresh one per fit: each draws its augmentations from its own seed
        return CIFARDataModule(data_dir=str(cifar_dir), batch_size=20, eval_batch_size=50)

    hparams = {"widths": TINY_WIDTHS, "lr": 0.05, "lookahead": True}
    torch.manual_seed(0)
    straight = ClassifierModule(**hparams)
    _trainer(tmp_path / "straight", RecordingLogger(), epochs=2).fit(straight, datamodule=datamodule())

    torch.manual_seed(0)
    first = ClassifierModule(**hparams)
    stopped = _trainer(tmp_path / "split", RecordingLogger(), epochs=2)
    stopped.callbacks.append(_StopAfterFirstEpoch())
    stopped.fit(first, datamodule=datamodule())
    last = tmp_path / "split" / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["epoch"] == 0
    floats = {
        k for k, v in checkpoint["state_dict"].items() if k.startswith("net.") and v.is_floating_point()
    }
    assert set(checkpoint["lookahead"]) == {k.removeprefix("net.") for k in floats}
    resumed = ClassifierModule(**hparams)
    _trainer(tmp_path / "split", RecordingLogger(), epochs=2).fit(
        resumed, datamodule=datamodule(), ckpt_path=str(last)
    )
    for (name, a), b in zip(
        straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
