"""FeatureVisCallback under Lightning: what it logs, when, and that it leaves training untouched."""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import (
    CLASSES,
    FAST,
    RGB_MEAN,
    RGB_STD,
    SIZE,
    PlainRGB,
    TinyClassifier,
    make_trainer,
    png_epochs,
    read_events,
    read_scalars,
)
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

import featvis.basis
from featvis import images as img
from featvis.callback import FeatureVisCallback
from featvis.colour import ColourTransform, InputConvention
from featvis.engine import RenderConfig
from featvis.hidden import SheetConfig
from featvis.outputs import WarnOnce
from featvis.scoring import RunScorer

# TinyClassifier: 48 training samples in batches of 16, so every epoch ends 3 global steps after the last one.
BATCHES = -(-TinyClassifier().samples // 16)

# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"every_n_epochs": 1.5}, "every_n_epochs"),
        ({"targets": []}, "empty"),
        ({"targets": "cat"}, "list"),
        ({"targets": [-1]}, "-1"),
        ({"targets": [1.0]}, "1.0"),
        ({"channels": [1]}, "needs layer"),
        ({"neuron": True}, "needs layer"),
        ({"layer": "net.conv", "channels": [-2]}, "channel"),
        ({"normalization_mean": [0.5, 0.5, 0.5]}, "together"),
        ({"normalization_mean": [0.5, 0.5, 0.5], "normalization_std": [0.2, 0.0, 0.2]}, "std"),
        ({"normalization_mean": [0.5], "normalization_std": [0.2]}, "normalization_mean"),
        ({"prefix": "a/b"}, "prefix"),
        ({"display_scale": 0}, "display_scale"),
        ({"save_png": "yes"}, "save_png"),
        ({"reference_model": 3}, "reference_model"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureVisCallback(**kwargs)


@pytest.mark.parametrize(
    ("targets", "pattern"),
    [([5], r"class index 5 .*valid: 0\.\.2"), (["zebra"], r"'zebra'.*\['red', 'green', 'blue'\]")],
)
def test_bad_class_target_fails_at_setup(tmp_path, targets, pattern):
    trainer = make_trainer(tmp_path, [FeatureVisCallback(targets=targets, config=FAST)], epochs=1)
    with pytest.raises(ValueError, match=pattern):
        trainer.fit(TinyClassifier())


def test_unknown_layer_fails_at_setup(tmp_path):
    trainer = make_trainer(tmp_path, [FeatureVisCallback(layer="net.conf", config=FAST)], epochs=1)
    with pytest.raises(ValueError, match="net.conv"):
        trainer.fit(TinyClassifier())


# ---------------------------------------------------------------------------------------------- logging


def test_logs_images_scalars_pngs_and_timeline(tmp_path):
    callback = FeatureVisCallback(config=FAST)
    trainer = make_trainer(tmp_path, [callback], epochs=3)
    trainer.fit(TinyClassifier())
    log_dir = Path(trainer.log_dir)
    events = read_events(log_dir)
    scale = 128 // SIZE
    # One image per class per epoch, at the global step: 0 before training, then the end of each epoch, the x
    # axis of Lightning's own charts. K images side by side, upsampled.
    steps = [0, BATCHES, 2 * BATCHES, 3 * BATCHES]
    for name in CLASSES:
        entries = events["images"][f"featvis/{name}"]
        assert [e[0] for e in entries] == steps
        width = 2 * SIZE * scale + 3 * 2
        assert {(w, h) for _, w, h in entries} == {(width, SIZE * scale + 4)}
    assert [e[0] for e in events["images"]["featvis/all"]] == steps
    _, w, h = events["images"]["featvis/all"][0]
    assert (w, h) == (2 * SIZE * scale + 6, 3 * SIZE * scale + 8)
    # Timeline: targets x rendered epochs (4 columns) plus its label margins, logged once, at the last step.
    timeline = events["images"]["featvis/timeline"]
    bare_w, bare_h = 4 * SIZE * scale + 10, 3 * SIZE * scale + 8
    assert len(timeline) == 1 and timeline[0][0] == 3 * BATCHES
    assert timeline[0][1] > bare_w and timeline[0][2] > bare_h
    for tag in ("target_prob", "objective", "render_seconds", "robustness", "diversity"):
        assert events["scalars"][f"featvis/{tag}"] == steps
    assert "featvis/spectral_gap" not in events["scalars"]  # no datamodule with a training split
    # The epoch beside them, as Lightning logs it at the same steps: e at the end of epoch e.
    epochs = dict(read_scalars(log_dir, "epoch"))
    assert [epochs[step] for step in steps] == [0, 1, 2, 3]
    # PNGs at native size, one folder per epoch and class.
    assert png_epochs(log_dir) == ["epoch_000", "epoch_001", "epoch_002", "epoch_003"]
    for epoch in range(4):
        for name in CLASSES:
            files = sorted((log_dir / "featvis" / f"epoch_{epoch:03d}" / name).iterdir())
            assert [f.name for f in files] == ["0.png", "1.png"]
            assert img.load_png(files[0]).shape == (3, SIZE, SIZE)
    picture = img.load_png(log_dir / "featvis" / "timeline.png")
    assert picture.shape == (3, timeline[0][2], timeline[0][1])  # the same picture as in TensorBoard
    # Below and right of the label margins: the first image of every class (rows) at every epoch (columns).
    firsts = [
        [img.load_png(log_dir / "featvis" / f"epoch_{e:03d}" / n / "0.png") for e in range(4)]
        for n in CLASSES
    ]
    bare = img.grid(torch.stack([torch.stack(row) for row in firsts]), scale=scale, padding=2)
    assert torch.equal(picture[:, -bare_h:, -bare_w:], bare)
    # The margins hold dark text: a tag left of every row, an epoch number above every column.
    top, left = picture.shape[1] - bare_h, picture.shape[2] - bare_w
    tile = SIZE * scale
    for row in range(3):
        assert float(picture[:, top + 2 + row * (tile + 2) :][:, :tile, :left].amin()) < 0.3
    for col in range(4):
        assert float(picture[:, :top, left + 2 + col * (tile + 2) :][:, :, :tile].amin()) < 0.3
    assert callback.state_dict()["epochs"] == [0, 1, 2, 3]


def test_every_n_epochs_and_targets_by_name(tmp_path):
    callback = FeatureVisCallback(every_n_epochs=2, targets=["blue", 0], config=FAST)
    trainer = make_trainer(tmp_path, [callback], epochs=5)
    trainer.fit(TinyClassifier())
    events = read_events(Path(trainer.log_dir))
    assert {t for t in events["images"]} == {"featvis/blue", "featvis/red", "featvis/all", "featvis/timeline"}
    assert [e[0] for e in events["images"]["featvis/blue"]] == [0, 2 * BATCHES, 4 * BATCHES]
    assert png_epochs(Path(trainer.log_dir)) == ["epoch_000", "epoch_002", "epoch_004"]


def test_channel_and_neuron_targets(tmp_path):
    channels = FeatureVisCallback(layer="net.conv", channels=[0, 5], prefix="chan", config=FAST)
    neurons = FeatureVisCallback(layer="net.act", neuron=True, prefix="neur", config=FAST)
    default_channels = FeatureVisCallback(layer="net.bn", targets=[1], prefix="mixed", config=FAST)
    trainer = make_trainer(tmp_path, [channels, neurons, default_channels], epochs=1)
    trainer.fit(TinyClassifier())
    tags = set(read_events(Path(trainer.log_dir))["images"])
    assert {"chan/net.conv.ch0", "chan/net.conv.ch5"} <= tags
    assert {f"neur/net.act.neuron{c}" for c in range(6)} <= tags
    # targets + layer without channels: the class, then the layer's first min(10, C) = 6 channels.
    assert {"mixed/green"} | {f"mixed/net.bn.ch{c}" for c in range(6)} <= tags
    assert not any(t.startswith("chan/red") for t in tags)
    assert (Path(trainer.log_dir) / "neur" / "epoch_001" / "net.act.neuron3" / "1.png").is_file()


def test_logger_without_images_gets_pngs_and_one_info_line(tmp_path, caplog, monkeypatch):
    callback = FeatureVisCallback(config=FAST)
    trainer = make_trainer(tmp_path, [callback], epochs=2, logger=CSVLogger(str(tmp_path), name="csv"))
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    with caplog.at_level(logging.INFO):
        trainer.fit(TinyClassifier())
    log_dir = Path(trainer.log_dir)
    notes = {r.getMessage() for r in caplog.records if "cannot show images" in r.getMessage()}
    expected = f"CSVLogger cannot show images; they are written as PNG files under {log_dir / 'featvis'}/."
    assert notes == {f"FeatureVisCallback: {expected}"}
    assert png_epochs(log_dir) == ["epoch_000", "epoch_001", "epoch_002"]
    assert (log_dir / "featvis" / "timeline.png").is_file()
    # metrics.csv: featvis's rows at the global step, with the epoch, like Lightning's own rows.
    lines = (log_dir / "metrics.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    featvis = [(int(r["step"]), int(r["epoch"])) for r in rows if r["featvis/target_prob"]]
    assert featvis == [(0, 0), (BATCHES, 1), (2 * BATCHES, 2)]
    lightning = {(int(r["step"]), int(r["epoch"])) for r in rows if r["train_loss"]}
    assert {(BATCHES, 1), (2 * BATCHES - 1, 1)} <= lightning  # the same step -> epoch mapping


def test_no_logger_writes_pngs_to_default_root_dir(tmp_path):
    trainer = make_trainer(tmp_path, [FeatureVisCallback(config=FAST)], epochs=1, logger=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no logger: no warning about loggers
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        trainer.fit(TinyClassifier())
    assert png_epochs(tmp_path) == ["epoch_000", "epoch_001"]
    assert (tmp_path / "featvis" / "timeline.png").is_file()


def test_colour_and_size_from_arguments_without_model_colour(tmp_path):
    class Plain(TinyClassifier):
        def __init__(self):
            super().__init__()
            del self.colour
            del self.class_names

    callback = FeatureVisCallback(
        normalization_mean=[0.4, 0.5, 0.6],
        normalization_std=[0.2, 0.2, 0.2],
        config=RenderConfig(steps=2, images_per_target=1),
    )
    model = Plain()
    model.example_input_array = torch.zeros(1, 3, 12, 12)
    trainer = make_trainer(tmp_path, [callback], epochs=1)
    trainer.fit(model)
    folder = Path(trainer.log_dir) / "featvis" / "epoch_001"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2"]  # indices without names
    assert img.load_png(folder / "0" / "0.png").shape == (3, 12, 12)


# ---------------------------------------------------------------------------------------------- no side effects


def _final_state(tmp_path: Path, callbacks) -> tuple[dict, dict]:
    L.seed_everything(123, verbose=False)
    model = TinyClassifier()
    trainer = make_trainer(tmp_path, callbacks, epochs=3, logger=False, enable_checkpointing=False)
    trainer.fit(model)
    return copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.optimizers[0].state_dict())


def test_training_is_bitwise_identical_with_and_without_callback(tmp_path):
    weights_a, optim_a = _final_state(tmp_path / "a", [])
    weights_b, optim_b = _final_state(tmp_path / "b", [FeatureVisCallback(config=FAST)])
    assert png_epochs(tmp_path / "b") == ["epoch_000", "epoch_001", "epoch_002", "epoch_003"]
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for index, state in optim_a["state"].items():
        assert torch.equal(state["momentum_buffer"], optim_b["state"][index]["momentum_buffer"])


def test_render_hook_leaves_model_and_rng_untouched(tmp_path):
    model = TinyClassifier()
    model.train()
    model.net.bn.eval()  # a mixed train/eval pattern must come back exactly
    model.net.head.weight.requires_grad_(False)
    x = torch.randn(4, 3, SIZE, SIZE)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    before = copy.deepcopy(model.state_dict())
    flags = {n: m.training for n, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    callback = FeatureVisCallback(config=FAST)
    cpu_rng = torch.get_rng_state()
    for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with context():
            result = callback.render(model)
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert result["rgb"].shape == (3, 2, 3, SIZE, SIZE)
    assert float(result["rgb"].min()) >= 0 and float(result["rgb"].max()) <= 1
    assert result["names"] == CLASSES
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    for name, param in model.named_parameters():
        if name in grads:
            assert torch.equal(param.grad, grads[name]), name
        else:
            assert param.grad is None
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    # Same seed, same weights: the same images every time.
    assert torch.equal(callback.render(model)["rgb"], result["rgb"])


def test_skips_sanity_check_and_fast_dev_run(tmp_path):
    callback = FeatureVisCallback(config=FAST)
    trainer = make_trainer(tmp_path / "sanity", [callback], epochs=1, num_sanity_val_steps=2)
    trainer.fit(TinyClassifier())
    events = read_events(Path(trainer.log_dir))
    assert [e[0] for e in events["images"]["featvis/red"]] == [0, BATCHES]

    trainer = make_trainer(tmp_path / "fdr", [FeatureVisCallback(config=FAST)], fast_dev_run=2, logger=False)
    trainer.fit(TinyClassifier())
    assert not (tmp_path / "fdr" / "featvis").exists()

    # validate / test / predict never render.
    trainer = make_trainer(tmp_path / "val", [FeatureVisCallback(config=FAST)], logger=False)
    trainer.validate(TinyClassifier(), verbose=False)
    assert not (tmp_path / "val" / "featvis").exists()


# ---------------------------------------------------------------------------------------------- resume


def _png_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("epoch_*/*/*.png"))}


def _fit_resumable(root: Path, callbacks, epochs: int, ckpt_path: Path | None = None) -> L.Trainer:
    """Fit the deterministic tiny model (no shuffling, no dropout) into ``<root>/run/version_0``."""
    trainer = make_trainer(root, callbacks, epochs=epochs)
    L.seed_everything(5, verbose=False)
    trainer.fit(
        TinyClassifier(shuffle=False, dropout=0.0), ckpt_path=None if ckpt_path is None else str(ckpt_path)
    )
    return trainer


@pytest.fixture(scope="module")
def uninterrupted_pngs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The PNG files of an uninterrupted 4-epoch run, the reference for resumed runs."""
    trainer = _fit_resumable(tmp_path_factory.mktemp("uninterrupted"), [FeatureVisCallback(config=FAST)], 4)
    return _png_bytes(Path(trainer.log_dir) / "featvis")


def test_resume_continues_the_same_timeline(tmp_path, uninterrupted_pngs):
    # 2 epochs, then resume from the last checkpoint to 4, logging into the same run folder.
    first = _fit_resumable(tmp_path, [FeatureVisCallback(config=FAST)], 2)
    checkpoint = next(Path(first.log_dir).rglob("*.ckpt"))
    resumed_callback = FeatureVisCallback(config=FAST.replace(seed=99))  # the checkpoint's seed wins
    second = _fit_resumable(tmp_path, [resumed_callback], 4, checkpoint)
    log_dir = Path(second.log_dir)
    assert log_dir == Path(first.log_dir)
    assert resumed_callback.config.seed == 0
    assert png_epochs(log_dir) == [f"epoch_{e:03d}" for e in range(5)]
    # Identical images for identical weights, epochs 3-4 included.
    pngs = _png_bytes(log_dir / "featvis")
    assert pngs.keys() == uninterrupted_pngs.keys()
    assert [k for k in pngs if pngs[k] != uninterrupted_pngs[k]] == []
    # Every epoch logged exactly once across both runs' event files, at the global step ending it.
    steps = [epoch * BATCHES for epoch in range(5)]
    events = read_events(log_dir)
    for tag in ("featvis/red", "featvis/all"):
        assert sorted(e[0] for e in events["images"][tag]) == steps
    assert sorted(events["scalars"]["featvis/target_prob"]) == steps
    # Each run's timeline at the global step its fit ended.
    assert sorted(e[0] for e in events["images"]["featvis/timeline"]) == [2 * BATCHES, 4 * BATCHES]
    # The resumed run's timeline still covers every epoch.
    assert resumed_callback.state_dict()["epochs"] == [0, 1, 2, 3, 4]
    timeline = img.load_png(log_dir / "featvis" / "timeline.png")
    assert timeline.shape[-1] > 5 * SIZE * 16 + 12  # 5 columns and the tags' margin


class _SeePngs(L.Callback):
    """Records the PNG folders (hidden ones included) when training starts, after FeatureVisCallback's hook."""

    def __init__(self) -> None:
        self.folders: list[str] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folders = sorted(p.name for p in (Path(trainer.log_dir) / "featvis").iterdir() if p.is_dir())


# A run that is killed (SIGKILL: no cleanup) while or after writing epoch 3's PNGs, before its checkpoint.
_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import lightning as L
from helpers import FAST, TinyClassifier, make_trainer
from featvis import images
from featvis.callback import FeatureVisCallback

root, when = Path(sys.argv[1]), sys.argv[2]


class Kill(L.Callback):
    def on_validation_end(self, trainer, pl_module):  # after FeatureVisCallback's render, before ModelCheckpoint
        if when == "after_png" and trainer.current_epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)


save_png, calls = images.save_png, []


def save_or_die(rgb, path):
    calls.append(path)
    if when == "mid_png" and len(calls) == 3 * 3 * 2 + 2:  # epoch 3's second file (3 classes x 2 images)
        os.kill(os.getpid(), signal.SIGKILL)
    save_png(rgb, path)


images.save_png = save_or_die
trainer = make_trainer(root, [FeatureVisCallback(config=FAST), Kill()], epochs=4)
L.seed_everything(5, verbose=False)
trainer.fit(TinyClassifier(shuffle=False, dropout=0.0))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("when", ["mid_png", "after_png"])
def test_resume_after_a_kill_keeps_no_render_the_checkpoint_lacks(tmp_path, uninterrupted_pngs, when):
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(tmp_path), when], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    log_dir = tmp_path / "run" / "version_0"
    (checkpoint,) = log_dir.rglob("*.ckpt")  # saved after epoch 2: it covers the renders of epochs 0, 1 and 2
    assert checkpoint.name.startswith("epoch=1-")
    featvis_dir = log_dir / "featvis"
    if when == "mid_png":  # an interrupted write is recognisable: a hidden staging folder, no epoch_003
        assert png_epochs(log_dir) == ["epoch_000", "epoch_001", "epoch_002"]
        assert [p.name.split(".partial-")[0] for p in featvis_dir.glob(".*")] == [".epoch_003"]
    else:  # the kill came after the PNGs: a complete epoch_003 that the checkpoint does not cover
        assert png_epochs(log_dir) == ["epoch_000", "epoch_001", "epoch_002", "epoch_003"]

    callback, seen = FeatureVisCallback(config=FAST), _SeePngs()
    resumed = _fit_resumable(tmp_path, [callback, seen], 4, checkpoint)
    assert Path(resumed.log_dir) == log_dir
    # Before rendering again, the resumed run holds only the renders its checkpoint covers: no epoch_003, no
    # staging folder.
    assert seen.folders == ["epoch_000", "epoch_001", "epoch_002"]
    # Afterwards the PNG tree is that of an uninterrupted run, byte for byte, with nothing hidden left over.
    pngs = _png_bytes(featvis_dir)
    assert pngs.keys() == uninterrupted_pngs.keys()
    assert [k for k in pngs if pngs[k] != uninterrupted_pngs[k]] == []
    assert [p.name for p in featvis_dir.iterdir() if p.name.startswith(".")] == []
    assert callback.state_dict()["epochs"] == [0, 1, 2, 3, 4]


def test_end_of_fit_says_where_the_pngs_went(tmp_path, caplog, monkeypatch):
    # Lightning's logger stops propagation when the root logger has no handler yet; let caplog see its records.
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    trainer = make_trainer(tmp_path, [FeatureVisCallback(config=FAST)], epochs=1)
    with caplog.at_level(logging.INFO):
        trainer.fit(TinyClassifier())
    root = Path(trainer.log_dir) / "featvis"
    lines = {r.getMessage() for r in caplog.records if r.getMessage().startswith("featvis:")}
    assert lines == {f"featvis: PNGs under {root}/epoch_*/, timeline {root / 'timeline.png'}"}
    assert (root / "timeline.png").is_file() and png_epochs(root.parent) == ["epoch_000", "epoch_001"]


def test_state_dict_round_trip():
    callback = FeatureVisCallback(config=FAST.replace(seed=7))
    callback._timeline.epochs = [0, 1]
    callback._timeline.thumbs = [torch.zeros(3, 3, SIZE, SIZE, dtype=torch.uint8)] * 2
    callback._names = CLASSES
    state = callback.state_dict()
    other = FeatureVisCallback(config=FAST)
    other.load_state_dict(state)
    assert other.config.seed == 7 and other._timeline.epochs == [0, 1] and len(other._timeline.thumbs) == 2
    assert other.state_key == callback.state_key
    assert FeatureVisCallback(prefix="x").state_key != callback.state_key


# ---------------------------------------------------------------------------------------------- featvis's own model


def test_phase_only_renders_keep_the_training_images_contrast(tmp_path, cifar_dir):
    from featvis import CIFARDataModule, ClassifierModule

    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=50, download=False)
    contrast, pictures = {}, {}
    kinds = {
        "fourier": {},
        "phase": {"parameterisation": "phase"},
        "data": {"fourier_scale": "data"},
        "layout": {"init_layout": 1.0},
    }
    for kind, settings in kinds.items():
        # Without the colour prior, which raises the 1/f pictures' contrast too: the parameterisations alone.
        config = RenderConfig(steps=2, images_per_target=2, colour_weight=0.0, **settings)
        sheets = SheetConfig(k=2, examples=2, probe_size=8)
        callback = FeatureVisCallback(config=config, targets=["cat", 0], sheets=sheets)
        trainer = make_trainer(tmp_path / kind, [callback], epochs=1, limit_val_batches=1)
        trainer.fit(ClassifierModule(network="small_cnn", widths=[4, 8, 8]), datamodule=datamodule)
        folder = Path(trainer.log_dir) / "featvis" / "epoch_001"
        rgb = torch.stack(
            [img.load_png(folder / name / f"{i}.png") for name in ("cat", "airplane") for i in (0, 1)]
        )
        contrast[kind], pictures[kind] = float(datamodule.colour.to_model(rgb).std()), rgb
        assert (folder / "channels").is_dir()  # the channel sheet rendered with the same parameterisation
    # Two steps from the small random start: 1/f pictures are nearly flat, while phase-only pictures carry the
    # amplitude spectra of training images, so their contrast in the whitened space is of a photograph's order.
    assert contrast["fourier"] < 0.2 < 0.5 < contrast["phase"] < 2.0, contrast
    # The data-scaled Fourier pictures start as flat as 1/f's, from the same draw, but change at the training
    # images' rates, so they differ.
    assert contrast["data"] < 0.2 and not torch.equal(pictures["data"], pictures["fourier"]), contrast
    # Layout-started pictures begin from training images' coarse layouts: each its own mean colour.
    spread = {kind: float(rgb.mean(dim=(2, 3)).std(dim=0).mean()) for kind, rgb in pictures.items()}
    assert spread["fourier"] < 0.05 < 0.15 < spread["layout"], spread

    # Without a datamodule that has split("train"), the training loader's images are read instead (below).


def test_classifier_module_with_cifar_datamodule(tmp_path, cifar_dir):
    from featvis import CIFARDataModule, ClassifierModule

    def data():
        return CIFARDataModule(data_dir=str(cifar_dir), batch_size=50, download=False)

    datamodule = data()
    callback = FeatureVisCallback(config=RenderConfig(steps=2, images_per_target=2), targets=["cat", 0])
    trainer = make_trainer(tmp_path / "a", [callback], epochs=1, limit_val_batches=1)
    trainer.fit(ClassifierModule(network="small_cnn", widths=[4, 8, 8]), datamodule=datamodule)
    log_dir = Path(trainer.log_dir)
    events = read_events(log_dir)
    assert set(events["images"]) == {"featvis/cat", "featvis/airplane", "featvis/all", "featvis/timeline"}
    batches = (
        5 * 20 // 50
    )  # the fixture's 5 x 20 training images in batches of 50 (a partial batch is dropped)
    for tag in ("target_prob", "robustness", "spectral_gap", "diversity", "colour_distance"):
        assert events["scalars"][f"featvis/{tag}"] == [0, batches], tag
    # The colour distance to the training images: finite, and far from zero for renders of 2 steps (near-grey).
    colour_distance = read_scalars(log_dir, "featvis/colour_distance")
    assert all(0.02 < value < 2.2 for _, value in colour_distance), colour_distance
    assert img.load_png(log_dir / "featvis" / "epoch_001" / "cat" / "1.png").shape == (3, 32, 32)
    assert callback._colour(trainer, None) is datamodule.colour  # the datamodule's decorrelated colours

    # A second run scored by the first run's checkpoint as reference model.
    checkpoint = tmp_path / "reference.ckpt"
    trainer.save_checkpoint(checkpoint)
    scored = FeatureVisCallback(
        config=RenderConfig(steps=1, images_per_target=2),
        targets=[1],
        reference_model=str(checkpoint),
        metrics=False,
    )
    trainer = make_trainer(tmp_path / "b", [scored], epochs=1, limit_val_batches=1)
    trainer.fit(ClassifierModule(network="small_cnn", widths=[4, 8, 8]), datamodule=data())
    scalars = read_events(Path(trainer.log_dir))["scalars"]
    assert scalars["featvis/transfer_acc"] == [0, batches]
    # Within-class diversity in the reference's features (the rendered model's own is a metrics scalar).
    diversity = read_scalars(Path(trainer.log_dir), "featvis/reference_diversity")
    assert [step for step, _ in diversity] == [0, batches] and all(0 < value <= 2 for _, value in diversity)
    assert "featvis/robustness" not in scalars and "featvis/diversity" not in scalars


# ---------------------------------------------------------------------------------------------- reference model


class _AlwaysClass(torch.nn.Module):
    """A reference model that answers ``label`` for every image, whatever it shows."""

    def __init__(self, label: int, classes: int = 3) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), classes).float())

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


@pytest.mark.parametrize(("label", "expected"), [(0, 0.5), (1, 0.5), (2, 0.0)])
def test_transfer_acc_is_the_reference_models_accuracy_on_the_renders(tmp_path, label, expected):
    # Targets red and green, two images each: a reference that always says `label` is right on exactly the
    # images of that class.
    callback = FeatureVisCallback(reference_model=_AlwaysClass(label), targets=[0, 1], config=FAST)
    trainer = make_trainer(tmp_path, [callback], epochs=1)
    trainer.fit(TinyClassifier())
    values = read_scalars(Path(trainer.log_dir), "featvis/transfer_acc")
    assert values == [(0, expected), (BATCHES, expected)]


def test_tags_and_scalars_are_those_of_the_first_release(tmp_path):
    # The exact sets logged before the redesign of issue 10 (recorded with commit 37754b4), for class, channel
    # and neuron targets side by side.
    callbacks = [
        FeatureVisCallback(config=FAST),
        FeatureVisCallback(layer="net.conv", channels=[0, 5], prefix="chan", config=FAST),
        FeatureVisCallback(layer="net.act", neuron=True, prefix="neur", targets=[1], config=FAST),
    ]
    trainer = make_trainer(tmp_path, callbacks, epochs=1)
    trainer.fit(TinyClassifier())
    events = read_events(Path(trainer.log_dir))
    neurons = {f"neur/net.act.neuron{c}" for c in range(6)}
    assert set(events["images"]) == {
        "chan/all", "chan/net.conv.ch0", "chan/net.conv.ch5", "chan/timeline", "featvis/all", "featvis/blue",
        "featvis/green", "featvis/red", "featvis/timeline", "neur/all", "neur/green", "neur/timeline",
    } | neurons  # fmt: skip
    assert set(events["scalars"]) == {
        "chan/diversity", "chan/objective", "chan/render_seconds", "epoch", "featvis/diversity",
        "featvis/objective", "featvis/render_seconds", "featvis/robustness", "featvis/target_prob",
        "neur/diversity", "neur/objective", "neur/render_seconds", "neur/robustness", "neur/target_prob",
        "train_loss", "val_loss",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- learned colour basis


def _plain_callback(std: list[float] = RGB_STD) -> FeatureVisCallback:
    return FeatureVisCallback(normalization_mean=RGB_MEAN, normalization_std=std, config=FAST)


def _never_read(*args, **kwargs):
    raise AssertionError("the training data was read to fit a colour basis")


def test_learned_basis_is_the_whitening_of_the_training_images_in_rgb(tmp_path):
    model, callback = PlainRGB(), _plain_callback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [callback], epochs=1).fit(model)
    assert not [w for w in caught if "do not look like RGB" in str(w.message)]  # the normalisation is right
    # Independently: the training images mapped back to RGB through the normalisation, whitened.
    images = model._data(0).tensors[0]
    rgb = images * torch.tensor(RGB_STD).view(1, 3, 1, 1) + torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
    expected = ColourTransform.from_pixels(rgb)
    learned = callback._basis.transform
    for key in ("mean", "matrix", "inverse"):
        assert torch.allclose(getattr(learned, key), getattr(expected, key), rtol=1e-5, atol=1e-5), key
    # The normalisation leaves the channels correlated; the learned basis whitens them.
    correlation = torch.corrcoef(images.transpose(0, 1).reshape(3, -1))
    assert min(float(correlation[0, 1]), float(correlation[0, 2]), float(correlation[1, 2])) > 0.3
    whitened = learned.to_model(rgb).transpose(0, 1).reshape(3, -1).double()
    assert torch.allclose(torch.cov(whitened, correction=0), torch.eye(3, dtype=torch.float64), atol=1e-4)
    assert torch.equal(callback.state_dict()["basis_matrix"], learned.matrix)


def _plain_final_state(tmp_path: Path, callbacks) -> tuple[dict, dict]:
    L.seed_everything(123, verbose=False)
    model = PlainRGB(jitter=True)
    trainer = make_trainer(tmp_path, callbacks, epochs=3, logger=False, enable_checkpointing=False)
    trainer.fit(model)
    return copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.optimizers[0].state_dict())


def test_training_is_bitwise_identical_with_and_without_a_learned_basis(tmp_path):
    weights_a, optim_a = _plain_final_state(tmp_path / "a", [])
    callback = _plain_callback()
    weights_b, optim_b = _plain_final_state(tmp_path / "b", [callback])
    assert callback._basis.transform is not None  # this run did read the training data and fit a basis
    assert png_epochs(tmp_path / "b") == ["epoch_000", "epoch_001", "epoch_002", "epoch_003"]
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for index, state in optim_a["state"].items():
        assert torch.equal(state["momentum_buffer"], optim_b["state"][index]["momentum_buffer"])


def test_phase_renders_of_a_drop_in_run_take_training_images_from_its_loader(tmp_path):
    weights_a, _ = _plain_final_state(tmp_path / "a", [])
    phase = FAST.replace(parameterisation="phase")
    callback = FeatureVisCallback(normalization_mean=RGB_MEAN, normalization_std=RGB_STD, config=phase)
    weights_b, _ = _plain_final_state(tmp_path / "b", [callback])
    for key in weights_a:  # the seeded read of the jittered dataset left the global random states alone
        assert torch.equal(weights_a[key], weights_b[key]), key
    # What was read: the loader's images in dataset order, mapped back to RGB through the normalisation (up to the
    # dataset's 2e-3 jitter and 8-bit rounding), their central 3/4 (6 x 6 of 8 x 8: no padding bands).
    images = PlainRGB()._data(0).tensors[0]
    rgb = images * torch.tensor(RGB_STD).view(1, 3, 1, 1) + torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
    read = callback._scorer._spectra.float() / 255
    centre = rgb.clamp(0, 1)[..., 1:7, 1:7]
    assert read.shape == centre.shape and float((read - centre).abs().max()) < 0.5 / 255 + 2.5e-3

    # The read is seeded: a fresh scorer reads the same images, whatever the global random states.
    model = PlainRGB(jitter=True)
    trainer = make_trainer(tmp_path / "c", [], epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(model)
    size, space = (SIZE, SIZE), callback.space
    reads = []
    for state in (1, 2):
        torch.manual_seed(state), random.seed(state), np.random.seed(state)  # what the jitter draws from
        reads.append(RunScorer(False, None, 0, WarnOnce()).spectra(phase, trainer, model, space, size))
    assert torch.equal(reads[0], reads[1])

    # Two steps from the small random start: 1/f pictures are nearly flat, phase-only ones carry the training
    # images' amplitude spectra, so their pixel contrast is of the training images' order.
    contrast = {}
    for kind in ("fourier", "phase"):
        config = FAST.replace(parameterisation=kind)
        drop_in = FeatureVisCallback(normalization_mean=RGB_MEAN, normalization_std=RGB_STD, config=config)
        contrast[kind] = float(drop_in.render(model, trainer)["rgb"].std(dim=(-2, -1)).mean())
    real = float(rgb.clamp(0, 1).std(dim=(-2, -1)).mean())
    assert contrast["fourier"] < 0.3 * real < 0.5 * real < contrast["phase"] < 2 * real, (contrast, real)


class _NoImages(TinyClassifier):
    """Trains on (N, 5) feature rows: its loader holds no images to take spectra from."""

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 5), torch.zeros(16, dtype=torch.long)), batch_size=8)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"parameterisation": "phase"}, "parameterisation='phase' takes"),
        ({"fourier_scale": "data"}, "parameterisation='fourier' with fourier_scale='data' takes"),
        ({"init_layout": 0.5}, "init_layout=0.5 takes"),
    ],
)
def test_renders_that_take_spectra_without_training_images_fail_before_training(tmp_path, settings, named):
    callback = FeatureVisCallback(config=FAST.replace(**settings), render_before_training=False)
    # Training on these rows would fail in the first conv; the callback fails first, with the fix.
    with pytest.raises(
        ValueError, match=re.escape(named) + r" .*\(N, 3, H, W\) image tensors; keep the defaults"
    ):
        make_trainer(tmp_path, [callback], epochs=1).fit(_NoImages())


@pytest.mark.parametrize("factor", [0.1, 10.0])
def test_warns_when_the_normalisation_disagrees_with_the_data(tmp_path, factor):
    callback = _plain_callback(std=[s * factor for s in RGB_STD])  # std given 10x too small, or too large
    with pytest.warns(UserWarning, match="do not look like RGB") as record:
        make_trainer(tmp_path, [callback], epochs=1).fit(PlainRGB())
    (message,) = [str(w.message) for w in record if "do not look like RGB" in str(w.message)]
    assert "pass the normalization_mean/normalization_std that the data loader applies" in message
    assert "\n" not in message


def test_learned_basis_state_dict_round_trip_renders_identically_without_refitting(tmp_path, monkeypatch):
    model, first = PlainRGB(), _plain_callback()
    trainer = make_trainer(tmp_path, [first], epochs=1)
    trainer.fit(model)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = _plain_callback()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # as a checkpoint loads
    monkeypatch.setattr(featvis.basis, "read_training_images", _never_read)
    rendered = resumed.render(model, trainer)["rgb"]
    assert torch.equal(rendered, first.render(model, trainer)["rgb"])
    assert not torch.allclose(rendered, _plain_callback().render(model)["rgb"])  # per-channel colours differ


def test_no_basis_is_learned_when_the_module_has_a_colour_transform(tmp_path, monkeypatch):
    monkeypatch.setattr(featvis.basis, "read_training_images", _never_read)
    callback = FeatureVisCallback(config=FAST)
    make_trainer(tmp_path, [callback], epochs=1).fit(TinyClassifier())
    assert callback._basis.transform is None and "basis_mean" not in callback.state_dict()


def test_resumed_run_renders_in_the_checkpoints_basis_without_refitting(tmp_path, monkeypatch):
    def fit(root: Path, epochs: int, ckpt_path: Path | None = None) -> Path:
        trainer = make_trainer(root, [_plain_callback()], epochs=epochs)
        L.seed_everything(5, verbose=False)
        trainer.fit(PlainRGB(shuffle=False, dropout=0.0), ckpt_path=ckpt_path)
        return Path(trainer.log_dir)

    uninterrupted = _png_bytes(fit(tmp_path / "a", 2) / "featvis")
    first = fit(tmp_path / "b", 1)
    monkeypatch.setattr(featvis.basis, "read_training_images", _never_read)  # the checkpoint holds the basis
    resumed = _png_bytes(fit(tmp_path / "b", 2, next(first.rglob("*.ckpt"))) / "featvis")
    assert resumed.keys() == uninterrupted.keys() and any(k.startswith("epoch_002") for k in resumed)
    assert [k for k in resumed if resumed[k] != uninterrupted[k]] == []


# ---------------------------------------------------------------------------------------------- input conventions


class GreyNet(TinyClassifier):
    """A 1-channel model on ``(grey - 0.5) / 0.25`` images, with no colour transform of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        del self.colour
        self.net.conv = torch.nn.Conv2d(1, 6, 3, padding=1)

    def _data(self, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, self.num_classes, (self.samples,), generator=g)
        grey = (
            0.5 + 0.1 * torch.randn(self.samples, 1, SIZE, SIZE, generator=g) + 0.1 * labels.view(-1, 1, 1, 1)
        )
        return TensorDataset((grey.clamp(0, 1) - 0.5) / 0.25, labels)


def test_grayscale_model_renders_grey_pictures_in_a_learned_one_channel_basis(tmp_path):
    convention = InputConvention(mean=[0.5], std=[0.25], order="L")
    callback = FeatureVisCallback(input_convention=convention, config=FAST)
    make_trainer(tmp_path, [callback], epochs=1, logger=False, enable_checkpointing=False).fit(GreyNet())
    for name in CLASSES:
        picture = img.load_png(tmp_path / "featvis" / "epoch_001" / name / "0.png")
        assert picture.shape == (3, SIZE, SIZE) and float(picture.std()) > 0.002  # not flat (3 steps only)
        assert torch.equal(picture[0], picture[1]) and torch.equal(picture[1], picture[2])  # grey
    basis = callback._basis.transform
    assert basis is not None and basis.channels == 1
    # The 1-D basis is the grey level's mean and spread in the training images, mapped back through the convention.
    grey = GreyNet()._data(0).tensors[0] * 0.25 + 0.5
    assert abs(float(basis.mean) - float(grey.mean())) < 1e-4
    assert abs(float(basis.inverse) - float(grey.std(correction=0))) < 1e-4
    assert callback.state_dict()["render"]["convention"]["order"] == "L"


def test_a_three_channel_convention_on_a_grey_model_names_the_fix(tmp_path):
    callback = FeatureVisCallback(normalization_mean=RGB_MEAN, normalization_std=RGB_STD, config=FAST)
    with pytest.raises(ValueError, match="order='L'") as caught:
        make_trainer(tmp_path, [callback], epochs=1, logger=False).fit(GreyNet())
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "featvis").exists()  # refused before the first render, nothing written


# ---------------------------------------------------------------------------------------------- channel sheets


def test_channel_sheets_are_logged_every_epoch_beside_the_class_render(tmp_path):
    sheets = SheetConfig(layers=["net.conv"], k=2, examples=3, probe_size=24)
    callback = FeatureVisCallback(config=FAST, targets=[0], sheets=sheets)
    trainer = make_trainer(tmp_path, [callback], epochs=2)
    trainer.fit(TinyClassifier())
    log_dir = Path(trainer.log_dir)
    events = read_events(log_dir)
    steps = [step for step, _, _ in events["images"]["featvis/channels/net.conv"]]
    assert steps == [0, 3, 6]  # before training and after each epoch (48 images in batches of 16)
    purity = read_scalars(log_dir, "featvis/channels/net.conv/purity")
    assert [step for step, _ in purity] == [0, 3, 6] and all(0.3 <= value <= 1.0 for _, value in purity)
    sheet = img.load_png(log_dir / "featvis" / "epoch_002" / "channels" / "net.conv.png")
    # Two rows (channels) of one rendered image and three examples, upsampled: wider than tall.
    assert sheet.shape[0] == 3 and sheet.shape[2] > 2 * sheet.shape[1] > 0 and float(sheet.std()) > 0.01
    state = callback.state_dict()
    assert len(state["sheets_channels"]["net.conv"]) == 2 and len(state["sheets_probe_indices"]) == 24
    # A resumed callback keeps the probe set and the channels chosen after the first epoch.
    resumed = FeatureVisCallback(config=FAST, targets=[0], sheets=sheets)
    resumed.load_state_dict(state)
    assert resumed._sheets is not None and resumed._sheets.channels == callback._sheets.channels


def test_channel_sheets_of_an_unknown_layer_fail_at_setup(tmp_path):
    callback = FeatureVisCallback(config=FAST, sheets=SheetConfig(layers=["net.cnov"]))
    with pytest.raises(ValueError, match="net.conv"):
        make_trainer(tmp_path, [callback], epochs=1).fit(TinyClassifier())
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.png"))


def test_channel_timeline_specialisation_and_warm_start_are_logged(tmp_path):
    sheets = SheetConfig(layers=["net.conv"], k=2, examples=3, probe_size=24, warm_start=True)
    callback = FeatureVisCallback(config=FAST, targets=[0], sheets=sheets)
    trainer = make_trainer(tmp_path, [callback], epochs=3)
    trainer.fit(TinyClassifier())
    log_dir = Path(trainer.log_dir)
    # Epoch 0 chooses on the untrained net for that render only; epoch 1 chooses for the run (cold, other
    # channels); epochs 2 and 3 start from the previous epoch's images.
    assert [value for _, value in read_scalars(log_dir, "featvis/channels/warm")] == [0.0, 0.0, 1.0, 1.0]
    events = read_events(log_dir)
    for name in ("timeline", "specialisation"):
        assert [step for step, _, _ in events["images"][f"featvis/channels/net.conv/{name}"]] == [9]
    # The history covers the epochs of the run's channels: 1, 2, 3 (columns), one row per channel.
    timeline = img.load_png(log_dir / "featvis" / "channels" / "net.conv" / "timeline.png")
    tile = FAST.size[0] * max(1, 128 // FAST.size[0])
    assert 3 * tile < timeline.shape[2] < 4 * tile + 200 and 2 * tile < timeline.shape[1] < 3 * tile + 100
    assert float(timeline.std()) > 0.05
    curve = img.load_png(log_dir / "featvis" / "channels" / "net.conv" / "specialisation.png")
    epochs, purity, tags = callback._sheets.purity_history()["net.conv"]
    assert epochs == [1, 2, 3] and purity.shape == (3, 2) and len(tags) == 2
    assert curve.shape[0] == 3 and float(curve.std()) > 0.05
    # The purity scalars are the history's mean per epoch.
    logged = [value for step, value in read_scalars(log_dir, "featvis/channels/net.conv/purity")][1:]
    assert logged == pytest.approx(purity.nanmean(dim=1).tolist(), abs=1e-6)


def test_a_time_budget_scales_steps_and_skips_sheets_and_logs_what_it_did(tmp_path):
    # Cold sheets: both renders ask for 40 steps every epoch (a warm start would ask for half).
    sheets = SheetConfig(layers=["net.conv", "net.act"], k=2, examples=2, probe_size=16, warm_start=False)
    config = FAST.replace(steps=40)
    callback = FeatureVisCallback(config=config, targets=[0], sheets=sheets, budget_seconds=30.0)
    # Costs as if measured: 0.5 s per class step, 1 s per sheet step and layer, 2 s of fixed work per epoch. The
    # full request (100 s) does not fit 30 s; both layers at the minimum 16 steps (42 s) do not either, so the
    # last layer goes, and the steps of the rest scale to fit: 0.5 s * 18 + 1 s * 18 + 2 s = 29 s.
    budget = callback._budget
    budget.observe("classes", 20.0, 40)
    budget.observe("sheets:net.conv", 40.0, 40)
    budget.observe("sheets:net.act", 40.0, 40)
    budget.observe("fixed", 2.0, 0)
    budget.smoothing = 1e-6  # keep these costs: the tiny model's real ones are far smaller
    trainer = make_trainer(tmp_path, [callback], epochs=1)
    trainer.fit(TinyClassifier())
    log_dir = Path(trainer.log_dir)
    assert [v for _, v in read_scalars(log_dir, "featvis/budget/layers_skipped")] == [1.0, 1.0]
    assert [v for _, v in read_scalars(log_dir, "featvis/budget/step_scale")] == pytest.approx([0.45, 0.45])
    assert [v for _, v in read_scalars(log_dir, "featvis/budget/seconds")] == [30.0, 30.0]
    images = read_events(log_dir)["images"]
    assert "featvis/channels/net.conv" in images and "featvis/channels/net.act" not in images
    # A tighter budget scales the class steps instead: 0.5 s/step * s + 2 s <= 12 s -> s = 20 of 40.
    callback = FeatureVisCallback(config=config, targets=[0], budget_seconds=12.0)
    callback._budget.observe("classes", 20.0, 40)
    callback._budget.observe("fixed", 2.0, 0)
    callback._budget.smoothing = 1e-6
    trainer = make_trainer(tmp_path / "tight", [callback], epochs=1)
    trainer.fit(TinyClassifier())
    scale = [v for _, v in read_scalars(Path(trainer.log_dir), "featvis/budget/step_scale")]
    assert scale == pytest.approx([0.5, 0.5], abs=0.03)


def test_a_budget_too_small_for_one_render_fails_before_training(tmp_path):
    callback = FeatureVisCallback(config=FAST.replace(steps=64), targets=[0], budget_seconds=1e-6)
    trainer = make_trainer(tmp_path, [callback], epochs=1)
    with pytest.raises(
        ValueError, match=r"budget_seconds=1e-06 is below the measured minimum .* raise budget_seconds"
    ):
        trainer.fit(TinyClassifier())
    assert trainer.global_step == 0 and not list(tmp_path.rglob("*.png"))
