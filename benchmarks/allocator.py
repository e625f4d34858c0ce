"""Host memory reuse: CPU training steps with glibc's malloc as it comes against ``featvis.allocator``'s setting.

Each measurement is a fresh Python process (the malloc setting is process-wide) that times training steps of
SpeedNet (``--widths``: the default config's, or ``64 256 256``, the anchor's net) the way
``benchmarks/step_cost.py`` does (random images, bf16 autocast where the CPU has
it, channels-last, the config's batch size; fastest of ``--steps`` steps after two untimed ones) and counts the
page faults per step and the peak resident memory. The two settings alternate, ``--rounds`` processes each, so a
load that comes and goes hits both alike; each setting keeps its fastest process. One run::

    python -m benchmarks.allocator

It prints one table (seconds per step, images/s, minor page faults per step, peak resident memory, and the ratio
of steps per second) and returns the numbers; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from typing import Any

import torch

from benchmarks.common import REPO, load_config, machine_label, make_parser, run_script, write_json

SETTINGS = ("system", "keep freed")


def _child(setting: str, widths: list[int], batch: int, steps: int) -> dict[str, Any]:
    """Time training steps in this process with ``setting`` applied; faults and peak memory of the timed steps."""
    from benchmarks.step_cost import step_seconds
    from featvis.allocator import keep_freed_memory

    applied = keep_freed_memory() if setting == "keep freed" else False
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    (seconds,) = step_seconds([widths], batch, torch.device("cpu"), rounds=steps, warmup=2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "setting": setting,
        "applied": applied,
        "seconds_per_step": seconds,
        "faults_per_step": faults / (steps + 2),
        "peak_mib": peak,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the processes, print the table, and return the numbers.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        ``{"machine", "batch_size", "rows": [{setting, seconds_per_step, images_per_second, faults_per_step,
        peak_mib}], "speedup", "table"}``.
    """
    config = load_config(REPO / "configs" / "cifar10.yaml")
    parser = make_parser("benchmarks.allocator", __doc__)
    parser.add_argument(
        "--batch-size", type=int, default=config["data"]["batch_size"], help="images per step"
    )
    parser.add_argument(
        "--widths",
        type=int,
        nargs=3,
        default=config["model"]["widths"],
        help="SpeedNet's conv widths (default: the default config's; 64 256 256 is the anchor's net)",
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting (default 2)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--child", choices=SETTINGS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.batch_size < 1:
        raise ValueError(
            f"--steps, --rounds and --batch-size must be >= 1, got {args.steps}, {args.rounds}, {args.batch_size}."
        )
    if args.child is not None:  # one measurement, in its own process
        print(json.dumps(_child(args.child, args.widths, args.batch_size, args.steps)))
        return {}
    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            command = [sys.executable, "-m", "benchmarks.allocator", "--child", setting]
            command += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--widths"]
            command += [str(width) for width in args.widths]
            out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            if setting not in best or row["seconds_per_step"] < best[setting]["seconds_per_step"]:
                best[setting] = row
    rows = [
        best[setting] | {"images_per_second": args.batch_size / best[setting]["seconds_per_step"]}
        for setting in SETTINGS
    ]
    speedup = rows[0]["seconds_per_step"] / rows[1]["seconds_per_step"]
    machine = machine_label()
    table = [
        f"Training step of SpeedNet {'/'.join(map(str, args.widths))} on {machine['cpu']} "
        f"({machine['torch_threads']} threads), "
        f"{args.batch_size} images per step, fastest of {args.steps} steps in the fastest of {args.rounds} "
        "processes per setting",
        "",
        "| malloc | applied | s per step | images/s | minor page faults per step (warm-up steps included) | peak resident memory, MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        table.append(
            f"| {row['setting']} | {'yes' if row['applied'] else 'no'} | {row['seconds_per_step']:.2f} "
            f"| {row['images_per_second']:.0f} | {row['faults_per_step']:.0f} | {row['peak_mib']:.0f} |"
        )
    table += ["", f"Steps per second, keep freed / system: {speedup:.2f}x"]
    print("\n" + "\n".join(table))
    result = {
        "machine": machine,
        "widths": args.widths,
        "batch_size": args.batch_size,
        "rows": rows,
        "speedup": speedup,
        "table": table,
    }
    write_json(result, args.json)
    return result


if __name__ == "__main__":
    run_script(main)
