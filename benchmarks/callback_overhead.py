"""Cost of FeatureVisCallback: epoch time of the default config with and without it, measured in one run.

Trains the default model (``configs/cifar10.yaml``: model, data and precision) twice from the same seed, once
without and once with the callback as configured there, and times every training epoch from
``on_train_epoch_start`` to the end of ``on_train_epoch_end`` (the callback renders in one of the two, so the
render counts). Validation is off, so only training and rendering are timed; the pre-training render (once per
fit) is reported on its own. With ``--limit-train-batches`` the full-epoch time is extrapolated from the time per
batch, and the ratio is given against that as well. Run it from the repository root::

    flock /tmp/featvis-cpu.lock python -m benchmarks.callback_overhead --epochs 1 --limit-train-batches 20

Target: at default settings the callback adds at most 25% to an epoch.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from benchmarks.common import CONFIG, callback_args, load_config, make_parser, run_script
from featvis.callback import FeatureVisCallback
from featvis.data import CIFARDataModule
from featvis.engine import resolve_autocast
from featvis.model import ClassifierModule


class EpochTimer(Callback):
    """Wall-clock time of every training epoch (placed after the callback under test, so its work is inside)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.batches: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self._start)
        self.batches.append(int(trainer.fit_loop.epoch_loop.batch_progress.current.completed))


class RenderTimer(FeatureVisCallback):
    """The callback, recording the wall-clock time of each of its hooks that rendered (with metrics and logging)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.render_times: list[tuple[int, float]] = []  # (epoch, seconds); epoch 0 is before training
        self._rendered = False

    def render(self, pl_module, trainer=None, steps=None):
        self._rendered = True
        return super().render(pl_module, trainer, steps)

    def _timed(self, hook, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        self._rendered = False
        start = time.perf_counter()
        hook(trainer, pl_module)
        if self._rendered:
            self.render_times.append((epoch, time.perf_counter() - start))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timed(super().on_train_start, trainer, pl_module, trainer.current_epoch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timed(super().on_validation_end, trainer, pl_module, trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timed(super().on_train_epoch_end, trainer, pl_module, trainer.current_epoch + 1)


def _precision(asked: str, accelerator: str) -> str:
    """The config's precision, but float32 on a CPU without native bf16 (emulated, many times slower), as
    ``featvis fit`` does."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if (
        "bf16" in str(asked)
        and on_cpu
        and resolve_autocast("auto", torch.device("cpu"), torch.float32) is None
    ):
        return "32-true"
    return asked


def run(args: argparse.Namespace, config: dict, callback: dict | None, root: Path) -> dict:
    """Train once from the config's seed, with the callback made from ``callback`` (its arguments) or without."""
    with_callback = callback is not None
    L.seed_everything(config.get("seed_everything", 0), verbose=False)
    data_args = dict(config["data"], data_dir=args.data_dir, download=False)
    data = CIFARDataModule(**data_args)
    model = ClassifierModule(**config["model"])
    timer = EpochTimer()
    callbacks: list[Callback] = []
    feature_vis = None
    if callback is not None:
        feature_vis = RenderTimer(**callback)
        callbacks.append(feature_vis)
    callbacks.append(timer)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        precision=_precision(config["trainer"].get("precision", "32-true"), args.accelerator),
        limit_train_batches=args.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(str(root), name="with" if with_callback else "without"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    renders = feature_vis.render_times if feature_vis is not None else []
    return {
        "epochs": timer.epochs,
        "batches": timer.batches,
        "full_batches": len(data.train_dataloader()),
        "pre": next((s for e, s in renders if e == 0), 0.0),
        "renders": [s for e, s in renders if e > 0],
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.
    """
    parser = make_parser("benchmarks.callback_overhead", __doc__)
    parser.add_argument("--data-dir", default="data", help="data_dir holding cifar-10-batches-py")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--limit-train-batches", type=int, default=None, help="batches per epoch (default all)"
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--steps", type=int, default=None, help="override the callback's render steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    callback = callback_args(config, args.config)
    if args.steps is not None:
        callback["config"] = callback["config"].replace(steps=args.steps)

    with tempfile.TemporaryDirectory() as tmp:
        without = run(args, config, None, Path(tmp))
        with_cb = run(args, config, callback, Path(tmp))

    render = callback["config"]
    print(
        f"\nFeatureVisCallback overhead ({args.config.name} settings: steps={render.steps}, "
        f"images_per_target={render.images_per_target}, device={args.accelerator}, "
        f"threads={torch.get_num_threads()})\n"
    )
    header = f"| {'epoch':>5} | {'batches':>7} | {'without s':>9} | {'with s':>8} | {'added s':>8} | {'ratio':>6} |"
    full_header = f" {'full epoch s (est.)':>19} | {'ratio vs full':>13} |"
    print(header + full_header)
    print("|" + "|".join("-" * (len(c)) for c in (header + full_header).split("|")[1:-1]) + "|")
    for i, (a, b) in enumerate(zip(without["epochs"], with_cb["epochs"], strict=True)):
        batches = without["batches"][i]
        added = b - a
        full = a / max(1, batches) * without["full_batches"]
        print(
            f"| {i + 1:>5} | {batches:>7} | {a:>9.2f} | {b:>8.2f} | {added:>8.2f} | {b / a:>6.3f} |"
            f" {full:>19.1f} | {(full + added) / full:>13.3f} |"
        )
    renders = with_cb["renders"]
    mean_render = sum(renders) / len(renders) if renders else math.nan
    print(f"\nrender time per epoch (inside the epochs above): {', '.join(f'{s:.2f} s' for s in renders)}")
    print(f"pre-training render (once per fit, not in any epoch): {with_cb['pre']:.2f} s")
    # The fastest epoch without the callback is the least disturbed by other load on the machine.
    fastest = min(range(len(without["epochs"])), key=lambda i: without["epochs"][i])
    full = without["epochs"][fastest] / max(1, without["batches"][fastest]) * without["full_batches"]
    print(
        f"render (incl. metrics and logging) / fastest full epoch without: {mean_render:.2f} s / {full:.1f} s "
        f"= {mean_render / full:.1%} added (target <= 25%)"
    )


if __name__ == "__main__":
    run_script(main)
