"""The default config on a CUDA GPU: time to accuracy, and the callback's render as a share of each epoch.

Runs ``featvis fit --config configs/cifar10.yaml --trainer.accelerator gpu --trainer.precision bf16-mixed`` in
this process, timed from inside by ``benchmarks.common.FitTimer``, and prints one row per epoch (epoch, training
and validation seconds, the render's seconds from the logged ``featvis/render_seconds`` and its share of the
epoch, the per-epoch ``val/acc_1view``) and the totals: wall time, training images/s, the full-TTA ``test/acc``
logged at the end of fit. On a machine without CUDA it stops at once with one line. From the repository root::

    python -m benchmarks.gpu_check --data ../shared/cifar10 --json runs/gpu_check.json
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_label, make_parser, run_featvis_fit, run_script, write_json
from featvis.cifar import CIFAR10_FOLDER

DEFAULT_DATA = Path("../shared/cifar10")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the default config on CUDA and print its time to accuracy and render share.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        ``{"machine", "featvis": run_featvis_fit's summary, "render_share", "images_per_second", "table"}``.

    Raises:
        ValueError: there is no CUDA device.
        FileNotFoundError: ``--data`` holds no CIFAR-10 folder.
    """
    parser = make_parser("benchmarks.gpu_check", __doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data_dir (default {DEFAULT_DATA})")
    parser.add_argument("--epochs", type=int, default=None, help="max_epochs (default: the config's)")
    parser.add_argument("--fit-args", default="", help="more featvis fit arguments")
    parser.add_argument("--log-dir", type=Path, default=None, help="logger save_dir (default: temporary)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise ValueError(
            "benchmarks.gpu_check needs a CUDA GPU, and torch.cuda.is_available() is False on this machine; "
            "run it where a GPU is lent (the CPU numbers come from benchmarks.time_to_accuracy)."
        )
    if not (args.data / CIFAR10_FOLDER).is_dir():
        raise FileNotFoundError(f"{args.data / CIFAR10_FOLDER} not found; pass --data <folder holding it>.")
    extra = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed"]
    if args.epochs is not None:
        extra += ["--trainer.max_epochs", str(args.epochs)]
    with tempfile.TemporaryDirectory(prefix="featvis-gpu-") as scratch:
        run, _ = run_featvis_fit(args.data, args.log_dir or scratch, extra + shlex.split(args.fit_args))

    machine = machine_label()
    epochs, renders = run["epoch_seconds"], run["render_seconds"]
    table = [
        f"Default config on {machine['gpu']} ({run['precision']}), host CPU {machine['cpu']}, data {args.data}",
        "",
        f"| epoch | epoch s | train s | validation s | render s | render share | {run['accuracy_name']} |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for index, seconds in enumerate(epochs):
        render = renders[index] if index < len(renders) else float("nan")
        val = run["val_seconds"][index] if index < len(run["val_seconds"]) else float("nan")
        accuracy = run["accuracy"][index] if index < len(run["accuracy"]) else float("nan")
        table.append(
            f"| {index + 1} | {seconds:.2f} | {run['train_seconds'][index]:.2f} | {val:.2f} | {render:.2f} "
            f"| {render / seconds:.1%} | {accuracy:.4f} |"
        )
    render_share = sum(renders) / sum(epochs) if epochs else float("nan")
    images_per_second = sum(run["images"]) / sum(run["train_seconds"]) if epochs else float("nan")
    table += [
        "",
        f"Time to accuracy: {run['epochs']} epochs in {run['wall_seconds']:.1f} s (whole fit, callback included), "
        f"test/acc with the full TTA {run['final_tta_accuracy']:.4f}; training {images_per_second:.0f} images/s; "
        f"render {render_share:.1%} of the epochs (plus {run['render_before_training']:.2f} s before training).",
    ]
    print("\n" + "\n".join(table))
    result = {
        "machine": machine,
        "featvis": run,
        "render_share": render_share,
        "images_per_second": images_per_second,
        "table": table,
    }
    write_json(result, args.json)
    return result


if __name__ == "__main__":
    run_script(main)
