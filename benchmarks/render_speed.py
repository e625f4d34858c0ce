"""Render speed: every class in one batched render against one render call per class (the peers' way).

Renders ``num_classes x images_per_target`` images at the default settings on the default model, then the same
targets one call each, in one run, and prints both times and their ratio. Heavy: on a shared CPU, run it from the
repository root under the CPU lock::

    flock /tmp/featvis-cpu.lock python -m benchmarks.render_speed --ckpt path/to/last.ckpt

Without ``--ckpt`` it uses an untrained default network (same architecture, so the same cost).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import make_parser, run_script
from featvis.engine import RenderConfig, device_and_dtype, render, resolve_autocast
from featvis.engine.config import Autocast
from featvis.model import ClassifierModule, load_classifier


def time_renders(model: torch.nn.Module, config: RenderConfig, repeats: int = 1) -> dict[str, Any]:
    """Time one render of every class in a batch against one render call per class, with the same settings.

    A short warm-up render comes first (allocator, kernels, threads). Each timing is the best of ``repeats``.

    Args:
        model: the classifier to render (its ``colour`` and ``class_names`` are used when it has them).
        config: the render settings of both ways.
        repeats: how often each way is timed.

    Returns:
        ``targets`` (classes rendered), ``images`` (images of the batched render), seconds of the ``batched``
        render and of the ``per_target`` calls together, their ``ratio``, and ``result`` (the batched render).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    render(model, config=config.replace(steps=3))
    batched, per_target, result = [], [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = render(model, config=config)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        for target in result.targets:
            render(model, [target], config=config)
        per_target.append(time.perf_counter() - start)
    count, per_image = result.rgb.shape[:2]
    return {
        "targets": count,
        "images": count * per_image,
        "batched": min(batched),
        "per_target": min(per_target),
        "ratio": min(per_target) / min(batched),
        "result": result,
    }


def model_step_seconds(
    model: torch.nn.Module,
    batch: int,
    repeats: int = 30,
    autocast: Autocast = "auto",
    size: tuple[int, int] = (32, 32),
) -> float:
    """Median seconds of one forward and input-gradient backward pass of the bare network on ``batch`` images.

    This is the part of a render step no engine can avoid, so ``10 x model_step(4) / model_step(40)`` bounds
    the speed-up that batching ten targets can give on this device. It runs at the precision a render with the
    same ``autocast`` setting uses (``featvis.engine.resolve_autocast``), so the bound fits the render.

    Args:
        model: the classifier; its ``net`` when it has one.
        batch: images per pass.
        repeats: timed passes (after three untimed ones).
        autocast: the render's ``autocast`` setting.
        size: ``(height, width)`` of the images.
    """
    net = getattr(model, "net", model)
    param = next(net.parameters())
    amp_dtype = resolve_autocast(autocast, param.device, param.dtype)
    images = torch.randn(batch, 3, *size, device=param.device, dtype=param.dtype)
    images = images.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        with torch.autocast(param.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
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
        The measured seconds (``batched``, ``per_target``) and their ``ratio``, the bare network's
        ``model_step_batched`` and ``model_step_single`` seconds and their ``model_only_ratio``, and the counts
        (``targets``, ``images``, ``steps``).
    """
    defaults = RenderConfig()
    parser = make_parser("benchmarks.render_speed", __doc__)
    parser.add_argument(
        "--ckpt", default=None, help="ClassifierModule checkpoint; default: untrained network"
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimisation steps per render")
    parser.add_argument("--images-per-target", type=int, default=defaults.images_per_target)
    parser.add_argument(
        "--autocast",
        default=defaults.autocast,
        choices=["auto", "bf16", "fp16", "none"],
        help="render precision",
    )
    parser.add_argument("--repeats", type=int, default=1, help="time each way this often, keep the best")
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
    config = RenderConfig(steps=args.steps, images_per_target=args.images_per_target, autocast=args.autocast)

    if args.ckpt:
        model = load_classifier(args.ckpt)
        source = args.ckpt
    else:
        model = ClassifierModule().eval()
        source = "untrained default network"
    timing = time_renders(model, config, args.repeats)
    batched, per_target, ratio = timing["batched"], timing["per_target"], timing["ratio"]
    num_classes, images = timing["targets"], timing["images"]
    # The floor: the bare network's forward + backward at both batch sizes, measured in the same run.
    was_training = model.training
    model.eval()
    floor_batched = model_step_seconds(model, images, autocast=config.autocast, size=config.size)
    floor_single = model_step_seconds(
        model, args.images_per_target, autocast=config.autocast, size=config.size
    )
    model.train(was_training)
    floor_ratio = num_classes * floor_single / floor_batched

    ms_per_step = batched / max(1, args.steps) * 1e3
    device, dtype = device_and_dtype(model)
    precision = resolve_autocast(config.autocast, device, dtype) or dtype  # what the render computed in
    print(
        f"model: {source}; {torch.get_num_threads()} threads; {args.steps} steps; {images} images; "
        f"{str(precision).removeprefix('torch.')}"
    )
    print(f"batched (all {num_classes} targets in one call): {batched:7.2f} s ({ms_per_step:.1f} ms/step)")
    print(f"one target per call ({num_classes} calls):          {per_target:7.2f} s")
    print(f"speed-up of batching: {ratio:.1f}x")
    print(
        f"bare network forward+backward: {floor_batched * 1e3:.1f} ms for {images} images, "
        f"{floor_single * 1e3:.1f} ms for {args.images_per_target}; the most batching can give here is "
        f"{floor_ratio:.1f}x"
    )
    print(
        f"batched render = {100 * batched / args.epoch_seconds:.0f}% of a {args.epoch_seconds:g} s training epoch; "
        f"mean final logit {timing['result'].values.mean().item():.2f}"
    )
    return {
        "targets": num_classes,
        "images": images,
        "steps": args.steps,
        "batched": batched,
        "per_target": per_target,
        "ratio": ratio,
        "model_step_batched": floor_batched,
        "model_step_single": floor_single,
        "model_only_ratio": floor_ratio,
    }


if __name__ == "__main__":
    run_script(main)
