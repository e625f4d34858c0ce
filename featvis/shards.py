"""One render split across DDP ranks and gathered on all of them: the targets of a callback's render.

Each rank renders its contiguous shard of the targets, padded to the same number of targets, so that every
rank gathers tensors of the same shape; the gather (``trainer.strategy.all_gather``) is collective, so every rank
must call :func:`gather_render`, with or without targets of its own. Without a trainer, or with one process, it
is a plain render.
"""

from __future__ import annotations

import atexit
from collections.abc import Sequence
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from featvis.engine import RenderResult

T = TypeVar("T")


def shard(items: Sequence[T], trainer: pl.Trainer | None) -> tuple[list[T], int]:
    """This rank's contiguous share of ``items`` and the share's padded length (the same on every rank)."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    per_rank = -(-len(items) // world)
    return list(items[rank * per_rank : (rank + 1) * per_rank]), per_rank


def gather_render(
    trainer: pl.Trainer | None,
    result: RenderResult | None,
    per_rank: int,
    total: int,
    images: int,
    size: tuple[int, int],
    device: torch.device,
) -> dict[str, Any]:
    """Gather every rank's render of its shard into the whole render, on every rank.

    Args:
        trainer: the trainer (its strategy gathers); None: one process.
        result: this rank's render of its shard; None when the rank has no targets (it still joins the gather).
        per_rank: the padded shard length of :func:`shard`.
        total: the number of targets of the whole render.
        images: images per target.
        size: ``(height, width)`` of the images.
        device: where the gathered tensors live (the collective's device).

    Returns:
        ``rgb`` ``(T, K, 3, H, W)`` in [0, 1], ``values`` ``(T, K)``, ``probs`` ``(T, K)`` (NaN for layer
        targets), all float32 on the CPU, and ``seconds``, the slowest rank's render time.
    """
    shapes = {"rgb": (images, 3, *size), "values": (images,), "probs": (images,), "seconds": ()}
    padded = {key: torch.zeros(per_rank, *shape, device=device) for key, shape in shapes.items()}
    if result is not None:
        fields = (result.rgb, result.values, result.target_probs(), torch.tensor(result.seconds))
        for value, field in zip(padded.values(), fields, strict=True):
            value[: len(result.values)] = field.to(value)
    if trainer is not None and trainer.world_size > 1:  # (world, per_rank, ...) -> (world * per_rank, ...)
        padded = {key: trainer.strategy.all_gather(value).flatten(0, 1) for key, value in padded.items()}
    out: dict[str, Any] = {key: value[:total].float().cpu() for key, value in padded.items()}
    out["seconds"] = float(out["seconds"].max()) if total else 0.0
    return out


_exit_hook_registered = False


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits, while Python is still whole (once a process).

    Lightning registers this for NCCL only. A gloo group left to interpreter finalisation can still hold the
    tensors of finished collectives (ours: the render gathers) in its C++ worker threads; freeing them then takes
    a GIL that is gone, and the process dies with SIGABRT ("terminate called without an active exception") after
    the run has finished, failing ``ddp_spawn``'s join. The hook does nothing if the group is already destroyed.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(_destroy_if_initialised)


def _destroy_if_initialised() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["destroy_process_group_at_exit", "gather_render", "shard"]
