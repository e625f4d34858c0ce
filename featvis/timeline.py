"""A run's timeline: per rendered epoch, the first image of each target, kept so it can be shown at the end.

Pure PyTorch (no Lightning), so the channel sheets (:mod:`featvis.hidden`) keep one per layer the same way the
callback keeps the class targets' one; :class:`featvis.outputs.RenderOutputs` draws and logs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


class Timeline:
    """The pictures a run's timeline is made of: per rendered epoch, the first image of each target.

    Its state goes into the callback's checkpoint state, so a resumed run continues the same timeline; a
    checkpoint rendered for other targets or another image size restarts it (with a warning).

    Args:
        warn: ``warn(key, message)``, e.g. the caller's :class:`featvis.outputs.WarnOnce`.
    """

    def __init__(self, warn: Callable[[str, str], None]) -> None:
        self.warn = warn
        self.epochs: list[int] = []
        self.thumbs: list[Tensor] = []  # per rendered epoch: (T, 3, H, W) uint8
        self.tags: list[str] = []  # one per target: the rows
        self._saved_tags: list[str] | None = None

    def add(self, epoch: int, rgb: Tensor, tags: Sequence[str]) -> None:
        """Record the render of ``epoch``: ``rgb`` is ``(T, K, 3, H, W)`` in [0, 1], one tag per target."""
        thumbs = (rgb[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)
        if self._saved_tags is not None:
            if self._saved_tags != list(tags) or (self.thumbs and self.thumbs[0].shape != thumbs.shape):
                message = "the checkpoint's timeline was rendered for other targets or another image size"
                self.warn("timeline", f"FeatureVisCallback: {message}; the timeline restarts with this run.")
                self.epochs, self.thumbs = [], []
            self._saved_tags = None
        self.epochs.append(epoch)
        self.thumbs.append(thumbs)
        self.tags = list(tags)

    def columns(self) -> tuple[list[int], list[str], Tensor]:
        """The rendered epochs in ascending order, the row tags and the pictures, ``(T, E, 3, H, W)`` in [0, 1]."""
        order = sorted(range(len(self.epochs)), key=self.epochs.__getitem__)
        tiles = torch.stack([self.thumbs[i] for i in order], dim=1).float() / 255
        tags = self.tags if len(self.tags) == len(tiles) else [str(i) for i in range(len(tiles))]
        return [self.epochs[i] for i in order], tags, tiles

    def state_dict(self, tags: Sequence[str] | None) -> dict[str, Any]:
        """The timeline as checkpoint state, with the tags of the targets it shows."""
        thumbs = torch.stack(self.thumbs) if self.thumbs else None
        return {
            "epochs": list(self.epochs),
            "names": list(tags) if tags is not None else None,
            "thumbs": thumbs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the timeline saved by :meth:`state_dict`."""
        self.epochs = [int(e) for e in state["epochs"]]
        thumbs = state.get("thumbs")
        self.thumbs = list(thumbs.unbind(0)) if thumbs is not None else []
        self._saved_tags = state.get("names")
        self.tags = list(self._saved_tags or [])


__all__ = ["Timeline"]
