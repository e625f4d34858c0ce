"""Step cost: one training step of SpeedNet at several widths, side by side in one run, and what it means for a fit.

Times SGD training steps (forward, loss, backward, Nesterov update) of ``SpeedNet`` on random images, for each
``--widths`` in turn and in rounds (A, B, A, B, ...), keeping each width's fastest round, so a load that comes and
goes hits both alike. Precision and memory format are those of ``featvis fit`` on this device: channels-last,
bf16 autocast where the device has native bf16 (a CUDA GPU, a CPU with AVX-512 bf16 or AMX), float32 elsewhere.
FLOPs per training image come from ``torch.utils.flop_counter`` (:func:`benchmarks.time_to_accuracy.training_step_flops`).

The table gives each width's seconds per step, images/s, cost relative to the first width, and the training
steps of one epoch and of a ``--epochs`` run (data path, validation, render and end-of-fit TTA not included: a
lower bound of ``featvis fit``'s wall time). Defaults: the default config's widths against the speedrun overlay's,
the default config's batch size and epochs::

    python -m benchmarks.step_cost
    python -m benchmarks.step_cost --widths 64 256 256 --widths 64 384 384 --widths 128 384 384
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import REPO, load_config, machine_label, make_parser, run_script, sync, write_json
from benchmarks.time_to_accuracy import training_step_flops
from featvis.engine import resolve_autocast
from featvis.networks import SpeedNet

TRAIN_IMAGES = 50_000


def step_seconds(
    widths: list[list[int]], batch: int, device: torch.device, rounds: int = 3, warmup: int = 1
) -> list[float]:
    """Fastest seconds of one training step of ``SpeedNet(widths=w)`` for each ``w``, measured in interleaved rounds.

    Args:
        widths: the conv widths to compare, three per entry.
        batch: images per step.
        device: where to train.
        rounds: timed steps per width, one per round.
        warmup: untimed steps per width before the first round.

    Returns:
        One time per entry of ``widths``, in its order.
    """
    if rounds < 1 or warmup < 0 or batch < 1:
        raise ValueError(
            f"step_seconds needs rounds >= 1, warmup >= 0, batch >= 1; got {rounds}, {warmup}, {batch}."
        )
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    autocast = resolve_autocast("auto", device, torch.float32)
    steps = []
    for width in widths:
        net = SpeedNet(widths=tuple(width)).to(device, memory_format=torch.channels_last).train()
        optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.85, nesterov=True)

        def step(net: torch.nn.Module = net, optimiser: torch.optim.Optimizer = optimiser) -> None:
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = F.cross_entropy(net(images).float(), labels)
            loss.backward()
            optimiser.step()

        for _ in range(warmup):
            step()
        steps.append(step)
    best = [float("inf")] * len(widths)
    for _ in range(rounds):
        for index, step in enumerate(steps):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time the widths, print the table, and return the numbers.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        ``{"machine", "device", "precision", "batch_size", "epochs", "rows": [{widths, gflop_per_image,
        seconds_per_step, images_per_second, relative, epoch_minutes, run_minutes}], "table"}``.
    """
    config = load_config(REPO / "configs" / "cifar10.yaml")
    speedrun = load_config(REPO / "configs" / "cifar10_speedrun.yaml")
    defaults = [config["model"]["widths"], speedrun["model"]["widths"]]
    parser = make_parser("benchmarks.step_cost", __doc__)
    parser.add_argument(
        "--widths", type=int, nargs=3, action="append", default=None, help=f"conv widths (default {defaults})"
    )
    parser.add_argument(
        "--batch-size", type=int, default=config["data"]["batch_size"], help="images per step"
    )
    parser.add_argument("--epochs", type=int, default=config["trainer"]["max_epochs"], help="epochs of a fit")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per width (default 3)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    widths = args.widths or defaults
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}.")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = resolve_autocast("auto", device, torch.float32)
    precision = "bf16 autocast" if autocast is not None else "float32"
    seconds = step_seconds(widths, args.batch_size, device, rounds=args.rounds)
    steps_per_epoch = -(-TRAIN_IMAGES // args.batch_size)
    machine = machine_label()
    rows = []
    for width, step in zip(widths, seconds, strict=True):
        rows.append(
            {
                "widths": list(width),
                "gflop_per_image": training_step_flops(SpeedNet(widths=tuple(width)), 1) / 1e9,
                "seconds_per_step": step,
                "images_per_second": args.batch_size / step,
                "relative": step / seconds[0],
                "epoch_minutes": step * steps_per_epoch / 60,
                "run_minutes": step * steps_per_epoch * args.epochs / 60,
            }
        )
    where = (
        machine["gpu"] if device.type == "cuda" else f"{machine['cpu']} ({machine['torch_threads']} threads)"
    )
    table = [
        f"Training step of SpeedNet on {where}, {precision}, channels_last, {args.batch_size} images per step, "
        f"fastest of {args.rounds} interleaved rounds",
        "",
        f"| widths | GFLOP per training image | s per step | images/s | relative | training steps of an epoch, "
        f"min | of {args.epochs} epochs, min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        table.append(
            f"| {'/'.join(map(str, row['widths']))} | {row['gflop_per_image']:.3f} | {row['seconds_per_step']:.2f} "
            f"| {row['images_per_second']:.0f} | {row['relative']:.2f}x | {row['epoch_minutes']:.1f} "
            f"| {row['run_minutes']:.0f} |"
        )
    print("\n" + "\n".join(table))
    result = {
        "machine": machine,
        "device": str(device),
        "precision": precision,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "rows": rows,
        "table": table,
    }
    write_json(result, args.json)
    return result


if __name__ == "__main__":
    run_script(main)
