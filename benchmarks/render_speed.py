"""Render speed: every class in one batched render against one render call per class (the peers' way).

Renders ``num_classes x images_per_target`` images at the default settings on the default model, then the same
targets one call each, in one run, and prints both times and their ratio. Heavy: on a shared CPU, run it under
the CPU lock::

    flock /tmp/featvis-cpu.lock python benchmarks/render_speed.py --ckpt path/to/last.ckpt

Without ``--ckpt`` it uses an untrained default network (same architecture, so the same cost).
"""

from __future__ import annotations

import argparse
import time

import torch

from featvis.engine import RenderConfig, render
from featvis.model import ClassifierModule, load_classifier


def _timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def model_step_seconds(model: torch.nn.Module, batch: int, repeats: int = 30) -> float:
    """Median seconds of one forward and input-gradient backward pass of the bare network on ``batch`` images.

    This is the part of a render step no engine can avoid, so ``10 x model_step(4) / model_step(40)`` bounds
    the speed-up that batching ten targets can give on this device.
    """
    net = getattr(model, "net", model)
    param = next(net.parameters())
    size = 32
    images = torch.randn(batch, 3, size, size, device=param.device).contiguous(
        memory_format=torch.channels_last
    )
    images.requires_grad_(True)
    amp = param.device.type in ("cpu", "cuda")
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        with torch.autocast(param.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(images)
        torch.autograd.grad(logits[:, 0].sum(), images)
        if param.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = sorted(times[3:])
    return times[len(times) // 2]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print a summary.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        The measured seconds (``batched``, ``per_target``) and their ``ratio``.
    """
    defaults = RenderConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt", default=None, help="ClassifierModule checkpoint; default: untrained network"
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimisation steps per render")
    parser.add_argument("--images-per-target", type=int, default=defaults.images_per_target)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=55.0,
        help="seconds of one training epoch of the default config on this machine, to express the render cost",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.ckpt:
        model = load_classifier(args.ckpt)
        source = args.ckpt
    else:
        model = ClassifierModule().eval()
        source = "untrained default network"
    num_classes = model.hparams.num_classes
    settings = {"steps": args.steps, "images_per_target": args.images_per_target}

    render(model, steps=3, images_per_target=args.images_per_target)  # warm-up: allocator, kernels, threads
    batched, result = _timed(lambda: render(model, **settings))
    per_target, _ = _timed(lambda: [render(model, [index], **settings) for index in range(num_classes)])
    ratio = per_target / batched
    # The floor: the bare network's forward + backward at both batch sizes, measured in the same run.
    was_training = model.training
    model.eval()
    floor_batched = model_step_seconds(model, num_classes * args.images_per_target)
    floor_single = model_step_seconds(model, args.images_per_target)
    model.train(was_training)
    floor_ratio = num_classes * floor_single / floor_batched

    images = num_classes * args.images_per_target
    print(f"model: {source}; {torch.get_num_threads()} threads; {args.steps} steps; {images} images")
    print(
        f"batched (all {num_classes} targets in one call): {batched:7.2f} s ({batched / args.steps * 1e3:.1f} ms/step)"
    )
    print(f"one target per call ({num_classes} calls):          {per_target:7.2f} s")
    print(f"speed-up of batching: {ratio:.1f}x")
    print(
        f"bare network forward+backward: {floor_batched * 1e3:.1f} ms for {images} images, "
        f"{floor_single * 1e3:.1f} ms for {args.images_per_target}; the most batching can give here is "
        f"{floor_ratio:.1f}x"
    )
    print(
        f"batched render = {100 * batched / args.epoch_seconds:.0f}% of a {args.epoch_seconds:g} s training epoch; "
        f"mean final logit {result.values.mean().item():.2f}"
    )
    return {
        "batched": batched,
        "per_target": per_target,
        "ratio": ratio,
        "model_step_batched": floor_batched,
        "model_step_single": floor_single,
        "model_only_ratio": floor_ratio,
    }


if __name__ == "__main__":
    main()
