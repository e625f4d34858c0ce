"""Bit-exact resume: a ``featvis fit`` killed with SIGKILL and resumed from ``last.ckpt`` ends exactly like an
uninterrupted run with the same seed (one TensorBoard run, the same PNG bytes, the same final weights).

The fast tests check the datamodule's part directly: the crop/flip generator travels in ``state_dict`` and the
shuffling order of an epoch depends on the epoch alone, so the data stream continues where the checkpoint left it.
The slow tests run real ``python -m featvis fit`` subprocesses on the tiny synthetic CIFAR folder; a callback
loaded from a helper module sends the process SIGKILL at a chosen point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import write_cifar_folder
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from featvis.data import CIFARDataModule

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "cifar10.yaml")
EPOCHS = 4
# Training batches per epoch of the synthetic folder: 100 images in batches of 16, the ragged one dropped.
BATCHES = 100 // 16

# The killer: a Lightning callback, added with --trainer.callbacks+=featvis_kill.KillAt, that SIGKILLs its own
# process at FEATVIS_KILL_AT: "batch:<epoch>:<batch_idx>" (before that training batch) or "save:<epoch>" (while
# the checkpoint of that epoch is being assembled: after the epoch's render wrote its PNGs, before the file).
KILLER = """
import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    def __init__(self) -> None:
        kind, *where = os.environ["FEATVIS_KILL_AT"].split(":")
        self.kind, self.where = kind, tuple(int(w) for w in where)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.kind == "batch" and (trainer.current_epoch, batch_idx) == self.where:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.kind == "save" and trainer.current_epoch == self.where[0]:
            os.kill(os.getpid(), signal.SIGKILL)
"""

# Checkpoints every 4 training steps instead of at the end of every epoch: most of them fall mid-epoch.
STEP_CHECKPOINTS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {filename: "step{step:03d}", auto_insert_metric_name: false, every_n_train_steps: 4, save_last: true}
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
      init_args: {logging_interval: epoch}
"""


# --- the datamodule's part, in process -------------------------------------------------------------------------


def _training(datamodule: CIFARDataModule, epoch: int = 0) -> CIFARDataModule:
    datamodule.trainer = SimpleNamespace(training=True, current_epoch=epoch)  # type: ignore[assignment]
    return datamodule


def test_augmentation_continues_from_the_saved_generator_state(cifar_dir: Path) -> None:
    first = _training(CIFARDataModule(data_dir=str(cifar_dir), batch_size=10, crop_padding=4, flip="random"))
    images, labels, indices = next(iter(first.train_dataloader()))
    batch = (images, labels, indices)
    first.on_after_batch_transfer(tuple(t.clone() for t in batch), 0)
    first.trainer = None
    state = first.state_dict()
    assert set(state) == {"augment_generator"}  # outside fit there is no epoch position to save
    expected, _ = _training(first).on_after_batch_transfer(tuple(t.clone() for t in batch), 0)

    resumed = CIFARDataModule(data_dir=str(cifar_dir), batch_size=10, crop_padding=4, flip="random")
    resumed.load_state_dict(state)
    again, _ = _training(resumed).on_after_batch_transfer(tuple(t.clone() for t in batch), 0)
    assert torch.equal(again, expected)
    # A fresh generator draws the first batch's crops instead: the state is what made them equal.
    fresh = _training(CIFARDataModule(data_dir=str(cifar_dir), batch_size=10, crop_padding=4, flip="random"))
    other, _ = fresh.on_after_batch_transfer(tuple(t.clone() for t in batch), 0)
    assert not torch.equal(other, expected)
    # Global RNG use does not reach the augmentation.
    with torch.random.fork_rng():
        torch.manual_seed(123)
        resumed.load_state_dict(state)
        assert torch.equal(resumed.on_after_batch_transfer(tuple(t.clone() for t in batch), 0)[0], expected)
    # Checkpoints written before the datamodule had a state load without complaint.
    resumed.load_state_dict({})


def _orders(loader, epochs: range) -> list[list[list[int]]]:
    orders = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)  # as Lightning does at the start of every epoch
        orders.append([batch[2].tolist() for batch in loader])
    return orders


def test_shuffling_depends_on_the_epoch_and_resumes_after_the_trained_batches(cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=16)
    orders = _orders(datamodule.train_dataloader(), range(3))
    assert len(orders[0]) == BATCHES and orders[0] != orders[1] != orders[2]
    # A new loader (a resumed run) told it is in epoch 2 shuffles as the first loader did in epoch 2.
    assert _orders(
        CIFARDataModule(data_dir=str(cifar_dir), batch_size=16).train_dataloader(), range(2, 3)
    ) == [orders[2]]

    # A mid-epoch checkpoint: epoch 2 after 4 batches continues with batch 4 of that epoch's order, then epoch 3.
    state = {**datamodule.state_dict(), "epoch": 2, "batches_trained": 4}
    resumed = CIFARDataModule(data_dir=str(cifar_dir), batch_size=16)
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    assert _orders(loader, range(2, 4)) == [
        orders[2][4:],
        _orders(datamodule.train_dataloader(), range(3, 4))[0],
    ]
    # Iterating again replays the whole epoch: the skip applies once.
    assert _orders(loader, range(2, 3)) == [orders[2]]

    # A checkpoint after an epoch's last batch continues with the next epoch, even before set_epoch is called
    # (DataLoader workers draw the first indices as soon as the loader is iterated).
    resumed = CIFARDataModule(data_dir=str(cifar_dir), batch_size=16)
    resumed.load_state_dict({**state, "batches_trained": BATCHES})
    assert [batch[2].tolist() for batch in resumed.train_dataloader()] == _orders(
        datamodule.train_dataloader(), range(3, 4)
    )[0]


# --- kill -9 and resume, in subprocesses ---------------------------------------------------------------------


def _fit(
    workdir: Path, log_dir: Path, *extra: str, kill_at: str | None = None
) -> subprocess.CompletedProcess:
    """``python -m featvis fit`` of the default config, shrunk to seconds, on the synthetic folder in ``workdir``."""
    args = [
        sys.executable,
        "-m",
        "featvis",
        "fit",
        "--config",
        CONFIG,
        *extra,
        "--data.data_dir",
        str(workdir / "data"),
        "--data.download",
        "false",
        "--data.batch_size",
        "16",
        "--data.eval_batch_size",
        "50",
        "--model.widths",
        "[8, 16, 16]",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(log_dir),
        "--seed_everything",
        "0",
        "--featvis.config.steps",
        "2",
        "--featvis.config.images_per_target",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # every run alike (and quick on a busy machine)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    if kill_at is not None:
        args.append("--trainer.callbacks+=featvis_kill.KillAt")
        env["FEATVIS_KILL_AT"] = kill_at
    return subprocess.run(
        args, cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _run_dir(log_dir: Path) -> Path:
    return log_dir / "cifar10" / "version_0"


def _pngs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "featvis").rglob("*.png"))}


def _files(run_dir: Path) -> set[str]:
    """Every file of the PNG tree (manifests too; a left-over staging folder would show up here)."""
    return {str(p.relative_to(run_dir)) for p in (run_dir / "featvis").rglob("*") if p.is_file()}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def _image_steps(run_dir: Path) -> dict[str, Counter]:
    """How often each image step occurs per tag, as TensorBoard shows the run: its event files read as one run (so
    events that a restarted writer purged, e.g. with ``purge_step``, do not count)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0})
    accumulator.Reload()
    return {tag: Counter(e.step for e in accumulator.Images(tag)) for tag in accumulator.Tags()["images"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    write_cifar_folder(root / "data")
    (root / "featvis_kill.py").write_text(KILLER)
    (root / "step_checkpoints.yaml").write_text(STEP_CHECKPOINTS)
    return root


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> Path:
    log_dir = workdir / "uninterrupted"
    result = _fit(workdir, log_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return _run_dir(log_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kill_at", "extra", "checkpoint_epoch"),
    [
        # Mid-epoch 2: last.ckpt is the end of epoch 1, whose render (epoch_002) is already on disk.
        ("mid_epoch", f"batch:2:{BATCHES // 2}", (), 1),
        # Right after the render of epoch 1 wrote epoch_002, before its checkpoint: last.ckpt is epoch 0's, so
        # the resumed run drops epoch_002 (and its events) and renders it again.
        ("after_png_write", "save:1", (), 0),
        # Checkpoints every 4 steps: last.ckpt is at step 16, epoch 2 after 4 of its 6 batches; the resumed run
        # trains that epoch's last 2 batches, not a restarted epoch.
        ("mid_epoch_checkpoint", "batch:2:5", ("--config", "step_checkpoints.yaml"), 2),
    ],
)
def test_killed_run_resumed_from_last_ckpt_matches_the_uninterrupted_run(
    workdir: Path,
    uninterrupted: Path,
    name: str,
    kill_at: str,
    extra: tuple[str, ...],
    checkpoint_epoch: int,
) -> None:
    log_dir = workdir / name
    extra = tuple(str(workdir / a) if a.endswith(".yaml") else a for a in extra)
    killed = _fit(workdir, log_dir, *extra, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = _run_dir(log_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == checkpoint_epoch
    assert (run_dir / "featvis" / "epoch_002").is_dir()  # the kill came after that render

    resumed = _fit(workdir, log_dir, *extra, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # The same final weights (and buffers: BatchNorm statistics, the fitted whitening stem).
    final, reference = _weights(last), _weights(uninterrupted / "checkpoints" / "last.ckpt")
    assert final.keys() == reference.keys()
    assert [key for key in final if not torch.equal(final[key], reference[key])] == []
    # The PNG tree, byte for byte, and nothing else in it (no killed run's leftovers).
    assert _files(run_dir) == _files(uninterrupted)
    assert _pngs(run_dir) == _pngs(uninterrupted)
    # One TensorBoard run: the resumed fit continued in version_0, and every image step is there exactly once.
    assert [p.name for p in (log_dir / "cifar10").iterdir()] == ["version_0"]
    expected_steps = _image_steps(uninterrupted)
    assert expected_steps and all(max(c.values()) == 1 for c in expected_steps.values())
    assert _image_steps(run_dir) == expected_steps
