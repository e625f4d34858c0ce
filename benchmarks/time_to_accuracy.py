"""Time to accuracy: the default ``featvis fit`` against the airbench94 anchor, on the same data, in one run.

Runs, one after the other:

* **featvis**: ``featvis fit --config configs/cifar10.yaml`` in this process (the callback included), timed from
  inside by ``benchmarks.common.FitTimer``: per-epoch training time, steps and images, the per-epoch validation
  accuracy (``val/acc_1view``) and the full-TTA ``test/acc`` logged at the end of fit;
* **anchor**: the airbench94 CPU port (``--anchor``, default ``../shared/anchors/airbench94_cpu.py``) as a
  subprocess; its per-epoch lines (1-view accuracy, cumulative training seconds) and final JSON line (6-view TTA
  accuracy) are parsed.

The physical limit: a 3x3 convolution microbenchmark (``--peak-size``: batch, channels, side) in each run's
training dtype (bf16 where the run trains in bf16, else float32) and channels-last memory, and each run's achieved
FLOP/s (FLOPs of one training step, counted by ``torch.utils.flop_counter.FlopCounterMode`` on its own network,
times its training steps/s) as a fraction of it. It prints one markdown table. Heavy (two full trainings); on a
shared CPU run it alone, from the repository root::

    python -m benchmarks.time_to_accuracy --data ../shared/cifar10 --json runs/time_to_accuracy.json

A smoke run in seconds: ``--epochs 1 --max-train-batches 2 --max-eval-batches 1 --anchor-epochs 0.05`` (or
``--skip-anchor``), with ``--fit-args "--featvis.config.steps 4"`` for a short render.

On a GPU (``--device auto`` picks CUDA where it is available, as ``featvis fit``'s ``accelerator: auto`` does) both
runs train there: featvis with the config's ``bf16-mixed``, the anchor as a CUDA copy written by
``tools/device/anchor_to_cuda.py`` (the same recipe, its tensors on the GPU, bf16 autocast there), and the
microbenchmark runs on the GPU. A script that already takes ``--device`` (such a copy) is run as it is.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import REPO, machine_label, make_parser, run_featvis_fit, run_script, sync, write_json
from featvis import allocator
from featvis.cifar import CIFAR10_FOLDER, read_split

DEFAULT_ANCHOR = Path("../shared/anchors/airbench94_cpu.py")
DEFAULT_DATA = Path("../shared/cifar10")
#: Writes a CUDA copy of the CPU anchor (its edits fail loudly if the anchor script changed).
ANCHOR_TO_CUDA = REPO / "tools" / "device" / "anchor_to_cuda.py"
#: The anchor trains under ``torch.autocast("cpu", dtype=torch.bfloat16)`` on every CPU (see its docstring).
ANCHOR_DTYPE = torch.bfloat16
#: Runs the anchor script (``sys.argv[1]``, its arguments after it) with every ``torch.autocast`` disabled, so it
#: trains in float32 as ``featvis fit`` does on a CPU without native bf16, where bf16 is emulated and one anchor
#: step takes tens of seconds. The script itself is not changed.
_AUTOCAST_OFF = (
    "import torch\n"
    "_autocast = torch.autocast\n"
    "def _off(device_type, *args, **kwargs):\n"
    "    return _autocast(device_type, enabled=False)\n"
    "torch.autocast = _off\n"
)
# Runs sys.argv[1] as __main__ with the arguments after it: the end of every launcher of the anchor.
_RUN_SCRIPT = "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
FLOAT32_SHIM = _AUTOCAST_OFF + _RUN_SCRIPT

# Prepended to the anchor's launcher when it reuses freed host memory as `featvis fit` does (featvis.allocator):
# set in its own process, after torch is imported, as the featvis command line sets it.
KEEP_MEMORY_SHIM = "import torch\nfrom featvis.allocator import keep_freed_memory\nkeep_freed_memory()\n"


def anchor_launcher(float32: bool, keep_memory: bool) -> list[str]:
    """The interpreter command that runs the anchor script (its path and arguments follow).

    Args:
        float32: disable its bf16 autocast (:data:`FLOAT32_SHIM`).
        keep_memory: reuse freed host memory in its process (:data:`KEEP_MEMORY_SHIM`), as ``featvis fit`` does.
    """
    if not (float32 or keep_memory):
        return [sys.executable]
    shim = (KEEP_MEMORY_SHIM if keep_memory else "") + (_AUTOCAST_OFF if float32 else "") + _RUN_SCRIPT
    return [sys.executable, "-c", shim]


def conv_throughput(
    dtype: torch.dtype,
    batch: int = 64,
    channels: int = 256,
    size: int = 16,
    min_seconds: float = 1.0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """FLOP/s of a ``channels -> channels`` 3x3 convolution (padding 1) on ``(batch, channels, size, size)``.

    Weights and input are in ``dtype`` and channels-last memory on ``device``, as in training; the FLOPs of one
    call are counted by FlopCounterMode (a multiply-add is 2 FLOPs) on an untimed first call, then calls are
    timed until ``min_seconds`` have passed (at least three). On CUDA every call is synchronised, so the time is
    the kernel's, not its launch's.

    Returns:
        ``{"flops": per call, "seconds": per call, "flop_per_second"}``.
    """
    if min(batch, channels, size) < 1 or min_seconds < 0:
        raise ValueError(
            f"conv_throughput needs positive sizes, got batch={batch} channels={channels} size={size}."
        )
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, dtype)
    conv = conv.to(memory_format=torch.channels_last)
    images = torch.randn(batch, channels, size, size, generator=generator).to(device, dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            conv(images)
        sync(device)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < min_seconds:
            conv(images)
            sync(device)
            calls += 1
        seconds = (time.perf_counter() - start) / calls
    flops = float(counter.get_total_flops())
    return {"flops": flops, "seconds": seconds, "flop_per_second": flops / seconds}


def training_step_flops(net: nn.Module, batch: int, size: int = 32, probe: int = 4) -> float:
    """FLOPs of one training step (forward, loss and backward) of ``net`` on ``batch`` images of ``size``.

    Counted by FlopCounterMode on a copy of ``net`` in training mode (its BatchNorm statistics stay untouched)
    with ``probe`` images, then scaled to ``batch``: convolution and matmul FLOPs grow linearly with the batch.
    Frozen weights (a whitening stem) cost no weight gradient, as in training.
    """
    copied = copy.deepcopy(net).train()
    device = next(copied.parameters()).device  # a net trained on a GPU is counted there
    images = torch.randn(probe, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        logits = copied(images)
        F.cross_entropy(logits.float(), torch.zeros(probe, dtype=torch.long, device=device)).backward()
    return counter.get_total_flops() * batch / probe


def anchor_network(path: str | Path, widths: Sequence[int] | None = None) -> tuple[nn.Module, dict]:
    """The anchor's network and its ``hyp`` dict, built from the script's own definitions without running it.

    Executes only the script's top-level classes, its assignments to ``hyp`` and ``net`` and the ``requires_grad``
    flags it sets on ``net`` (its frozen stem), with ``w`` set to ``widths`` (the script's default 64/256/256).

    Raises:
        ValueError: the script defines no ``net`` or no ``hyp`` this way.
    """
    tree = ast.parse(Path(path).read_text(), filename=str(path))

    def wanted(target: ast.expr) -> bool:  # hyp = ..., net = ..., net[...].<...>.requires_grad = ...
        if isinstance(target, ast.Name):
            return target.id in ("hyp", "net")
        node: ast.expr = target
        while isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        is_flag = isinstance(target, ast.Attribute) and target.attr == "requires_grad"
        return is_flag and isinstance(node, ast.Name) and node.id == "net"

    keep: list[ast.stmt] = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) or (isinstance(node, ast.Assign) and all(map(wanted, node.targets)))
    ]
    namespace: dict[str, Any] = {
        "torch": torch,
        "nn": nn,
        "F": F,
        "math": math,
        "w": list(widths or (64, 256, 256)),
        "DEV": torch.device("cpu"),  # its CUDA copy (tools/device/anchor_to_cuda.py) moves `net` to DEV
    }
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    if not isinstance(namespace.get("net"), nn.Module) or not isinstance(namespace.get("hyp"), dict):
        raise ValueError(f"{path} does not define `hyp` and `net` at top level; is it the airbench94 anchor?")
    return namespace["net"], namespace["hyp"]


def run_anchor(
    path: Path,
    data_dir: Path,
    epochs: float,
    widths: Sequence[int] | None,
    float32: bool = False,
    keep_memory: bool = False,
) -> dict[str, Any]:
    """Run the anchor script as a subprocess, echo its lines, and parse its per-epoch lines and final JSON line.

    Args:
        path: the anchor script.
        data_dir: its ``--data``.
        epochs: its ``--epochs``.
        widths: its ``--widths``; None keeps the script's.
        float32: run it with autocast disabled (:data:`FLOAT32_SHIM`) instead of its bf16 autocast.
        keep_memory: its process reuses freed host memory (:data:`KEEP_MEMORY_SHIM`).

    Returns:
        ``wall_seconds`` (the whole process), ``accuracy`` per epoch (1 view), ``train_seconds`` (its own,
        cumulative at the end), ``final_tta_accuracy``, ``script_wall_seconds`` (its own, after loading data).

    Raises:
        RuntimeError: the script failed or printed no final JSON line.
    """
    command = [
        *anchor_launcher(float32, keep_memory),
        str(path),
        "--data",
        str(data_dir),
        "--epochs",
        str(epochs),
    ]
    if widths:
        command += ["--widths", *map(str, widths)]
    accuracy: list[float] = []
    final: dict[str, Any] = {}
    lines: list[str] = []
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None  # stdout=PIPE
        for line in process.stdout:
            print(f"  [anchor] {line.rstrip()}", flush=True)
            lines.append(line.rstrip())
            words = line.split()
            if len(words) >= 4 and words[0] == "epoch" and words[2] == "val_acc":
                accuracy.append(float(words[3]))
            elif line.startswith("{"):
                final = json.loads(line)
    wall = time.perf_counter() - start
    if process.returncode or "tta_val_acc" not in final:
        tail = " | ".join(lines[-3:])
        raise RuntimeError(
            f"anchor {path} exited with status {process.returncode} without its result: {tail}"
        )
    return {
        "wall_seconds": wall,
        "accuracy": accuracy,
        "train_seconds": float(final["train_seconds"]),
        "final_tta_accuracy": float(final["tta_val_acc"]),
        "script_wall_seconds": float(final["wall_seconds"]),
        "epochs": float(final["epochs"]),
    }


def anchor_for(path: Path, device: torch.device, folder: Path) -> Path:
    """The anchor script to run on ``device``: ``path`` itself on a CPU or when it already takes ``--device``,
    else its CUDA copy written into ``folder`` by ``tools/device/anchor_to_cuda.py``.

    Raises:
        RuntimeError: the copy could not be made (the anchor script changed where the edits apply).
    """
    if device.type == "cpu" or 'add_argument("--device"' in path.read_text():
        return path
    target = folder / f"{path.stem}_{device.type}.py"
    made = subprocess.run(
        [sys.executable, str(ANCHOR_TO_CUDA), str(path), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode:
        raise RuntimeError(
            f"could not make a {device.type} copy of {path}: {made.stderr.strip() or made.stdout}"
        )
    return target


def _dtype_of(precision: str) -> torch.dtype:
    return torch.bfloat16 if "bf16" in precision else torch.float32


def _row(name: str, precision: str, run: dict[str, Any], peak: dict[str, dict[str, float]]) -> str:
    flop_rate = run["flops_per_step"] * run["steps_per_second"]
    fraction = flop_rate / peak[str(_dtype_of(precision))]["flop_per_second"]
    run["achieved_flop_per_second"], run["fraction_of_peak"] = flop_rate, fraction
    curve = " ".join(f"{value:.3f}" for value in run["accuracy"])
    cells = [
        name,
        precision,
        f"{run['epochs']:g}",
        f"{run['wall_seconds']:.1f}",
        f"{run['train_total_seconds']:.1f}",
        f"{run['images_per_second']:.0f}",
        f"{run['steps_per_second']:.3f}",
        f"{run['flops_per_step'] / 1e9:.1f}",
        f"{flop_rate / 1e9:.1f}",
        f"{fraction:.1%}",
        curve,
        f"{run['final_tta_accuracy']:.4f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _featvis_args(args: argparse.Namespace) -> list[str]:
    extra: list[str] = []
    if args.epochs is not None:
        extra += ["--trainer.max_epochs", str(args.epochs)]
    if args.max_train_batches is not None:
        extra += ["--trainer.limit_train_batches", str(args.max_train_batches)]
    if args.max_eval_batches is not None:
        extra += ["--trainer.limit_val_batches", str(args.max_eval_batches)]
    if args.widths:
        extra += ["--model.widths", json.dumps(args.widths)]
    return extra + shlex.split(args.fit_args)


def _anchor_run(args: argparse.Namespace, script: Path, float32: bool, keep_memory: bool) -> dict[str, Any]:
    """Run ``script`` (the anchor, or its CUDA copy) and add its rates and FLOPs per step to :func:`run_anchor`'s."""
    net, hyp = anchor_network(args.anchor, args.widths)
    anchor = run_anchor(script, args.data, args.anchor_epochs, args.widths, float32, keep_memory)
    train_images = read_split(args.data / CIFAR10_FOLDER, train=True)[1].numel()
    steps = math.ceil(train_images // hyp["bs"] * args.anchor_epochs)
    anchor["train_total_seconds"] = anchor["train_seconds"]
    anchor["steps_per_second"] = steps / anchor["train_seconds"]
    anchor["images_per_second"] = steps * hyp["bs"] / anchor["train_seconds"]
    anchor["flops_per_step"] = training_step_flops(net, int(hyp["bs"]))
    anchor["precision"] = "float32 (autocast off)" if float32 else "bf16 autocast"
    anchor["keeps_freed_memory"] = keep_memory
    return anchor


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both trainings and the microbenchmark, print the table, and return the numbers.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        ``{"machine", "peak": {dtype: conv_throughput}, "featvis": {...}, "anchor": {...} (absent with
        --skip-anchor), "ratios": {...}, "table": [lines]}``.
    """
    parser = make_parser("benchmarks.time_to_accuracy", __doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data_dir (default {DEFAULT_DATA})")
    parser.add_argument(
        "--anchor", type=Path, default=DEFAULT_ANCHOR, help=f"anchor script ({DEFAULT_ANCHOR})"
    )
    parser.add_argument("--skip-anchor", action="store_true", help="run featvis and the microbenchmark only")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where both runs and the microbenchmark run; auto: cuda where available, as accelerator: auto",
    )
    parser.add_argument("--epochs", type=int, default=None, help="featvis max_epochs (default: the config's)")
    parser.add_argument(
        "--anchor-epochs", type=float, default=9.9, help="the anchor's --epochs (default 9.9)"
    )
    parser.add_argument(
        "--anchor-precision",
        choices=("auto", "bf16", "float32"),
        default="auto",
        help="the anchor's bf16 autocast, or float32 with autocast disabled; auto: bf16 where the CPU (or a GPU) "
        "has native bf16, else float32, the precision featvis fit trains in there",
    )
    parser.add_argument(
        "--anchor-memory",
        choices=("same", "system"),
        default="same",
        help="same (default): the anchor's process reuses freed host memory exactly when featvis fit's does "
        "(featvis.allocator; FEATVIS_KEEP_FREED_MEMORY=0 turns both off); system: glibc's malloc as it comes",
    )
    parser.add_argument("--max-train-batches", type=int, default=None, help="featvis limit_train_batches")
    parser.add_argument("--max-eval-batches", type=int, default=None, help="featvis limit_val_batches")
    parser.add_argument("--widths", type=int, nargs=3, default=None, help="conv widths of both nets (smoke)")
    parser.add_argument(
        "--fit-args", default="", help='more featvis fit arguments, e.g. "--featvis.config.steps 4"'
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="featvis logger save_dir (default: temporary)"
    )
    parser.add_argument(
        "--peak-size", type=int, nargs=3, default=(64, 256, 16), metavar=("BATCH", "CHANNELS", "SIDE")
    )
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="time per microbenchmark (default 1)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    folder = args.data / CIFAR10_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found; pass --data <folder holding {CIFAR10_FOLDER}>.")
    if not args.skip_anchor and not args.anchor.is_file():
        raise FileNotFoundError(
            f"anchor script {args.anchor} not found; pass --anchor PATH or --skip-anchor."
        )
    if args.anchor_epochs <= 0:
        raise ValueError(f"--anchor-epochs must be positive, got {args.anchor_epochs}.")

    machine = machine_label()
    device = torch.device(
        args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; pass --device cpu or auto.")
    # bf16 where the device has it natively (every CUDA GPU this runs on, CPUs with AVX-512 bf16 or AMX).
    anchor_float32 = args.anchor_precision == "float32" or (
        args.anchor_precision == "auto" and device.type == "cpu" and not machine["native_bf16"]
    )
    accelerator = ["--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu"]
    # featvis fit (in this process) applies featvis.allocator unless the environment turns it off; the anchor
    # gets the same, so that the two runs differ by their code and not by the C library's settings.
    keep_memory = args.anchor_memory == "same" and allocator.enabled()
    with tempfile.TemporaryDirectory(prefix="featvis-tta-") as scratch:
        # The anchor's CUDA copy is made first: a changed anchor script fails before any training.
        script = None if args.skip_anchor else anchor_for(args.anchor, device, Path(scratch))
        ours, cli = run_featvis_fit(args.data, args.log_dir or scratch, accelerator + _featvis_args(args))
        anchor = None if script is None else _anchor_run(args, script, anchor_float32, keep_memory)
    ours["train_total_seconds"] = sum(ours["train_seconds"])
    ours["steps_per_second"] = sum(ours["steps"]) / ours["train_total_seconds"]
    ours["images_per_second"] = sum(ours["images"]) / ours["train_total_seconds"]
    ours["flops_per_step"] = training_step_flops(cli.model.net, int(cli.datamodule.hparams["batch_size"]))
    dtypes = {_dtype_of(ours["precision"])}
    if anchor is not None:
        dtypes.add(torch.float32 if anchor_float32 else ANCHOR_DTYPE)

    batch, channels, side = args.peak_size
    peak = {
        str(dtype): conv_throughput(dtype, batch, channels, side, args.peak_seconds, device)
        for dtype in sorted(dtypes, key=str)
    }
    table = [
        (f"Time to accuracy on {machine['gpu']} (host: " if device.type == "cuda" else "Time to accuracy on ")
        + f"{machine['cpu']} ({machine['cpu_cores']} cores, native bf16: "
        f"{'yes' if machine['native_bf16'] else 'no'}, {machine['torch_threads']} torch threads), data {args.data}",
        "",
        "| run | precision | epochs | wall s | train s | train images/s | steps/s | GFLOP/step | achieved GFLOP/s "
        "| of peak | per-epoch accuracy (1 view) | final TTA accuracy (6 views) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        _row("featvis fit (callback included)", ours["precision"], ours, peak),
    ]
    if anchor is not None:
        table.append(_row(f"anchor {args.anchor.name}", anchor["precision"], anchor, peak))
    table.append("")
    featvis_memory = "reuses freed host memory" if allocator.enabled() else "uses glibc's malloc as it comes"
    same = keep_memory == allocator.enabled()
    anchor_memory = (
        "" if anchor is None else (", and so does the anchor" if same else ", the anchor does not")
    )
    table.append(f"Host memory: featvis {featvis_memory} (featvis.allocator){anchor_memory}")
    for name, conv in peak.items():
        table.append(
            f"Peak: 3x3 conv {channels}->{channels} on {batch}x{side}x{side}, channels_last, {name}: "
            f"{conv['flop_per_second'] / 1e9:.1f} GFLOP/s"
        )
    val, renders = ours["val_seconds"], ours["render_seconds"]
    table.append(
        f"featvis per epoch: train {ours['train_total_seconds'] / max(1, ours['epochs']):.1f} s, validation "
        f"{min(val, default=float('nan')):.1f} s ({ours['accuracy_name']}; the last one, with the end-of-fit TTA, "
        f"{val[-1] if val else float('nan'):.1f} s), render {sum(renders) / max(1, len(renders)):.1f} s"
    )
    ratios: dict[str, float] = {}
    if anchor is not None:
        ratios = {
            "wall": ours["wall_seconds"] / anchor["wall_seconds"],
            "steps_per_second": ours["steps_per_second"] / anchor["steps_per_second"],
        }
        table.append(
            f"featvis / anchor: wall time {ratios['wall']:.2f}x (goal <= 1.25x), training steps/s "
            f"{ratios['steps_per_second']:.2f}x (goal >= 0.95x at equal precision)"
        )
    if args.max_eval_batches is not None:
        table.append(f"featvis accuracies on the first {args.max_eval_batches} evaluation batches only.")
    print("\n" + "\n".join(table))
    result: dict[str, Any] = {
        "machine": machine,
        "peak": peak,
        "featvis": ours,
        "ratios": ratios,
        "table": table,
    }
    if anchor is not None:
        result["anchor"] = anchor
    write_json(result, args.json)
    return result


if __name__ == "__main__":
    run_script(main)
