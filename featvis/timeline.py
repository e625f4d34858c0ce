"""History over epochs: a run's timeline of pictures and a layer's specialisation curve.

Pure PyTorch (no Lightning), so the channel sheets (:mod:`featvis.hidden`) keep one of each per layer the same way
the callback keeps the class targets' timeline; :class:`featvis.outputs.RenderOutputs` draws and logs a timeline.

* :class:`Timeline`: per rendered epoch, the first image of each target (rows: targets, columns: epochs).
* :class:`PurityHistory`: per rendered epoch, the class purity of each channel's top examples, so a curve shows
  when a layer's channels specialise (one class among their favourite training images).

Both go into checkpoint state, so a resumed run continues them; rows are tied to their tags: a history that is
continued with other tags (other targets or channels) restarts, with a warning, instead of mixing rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class Timeline:
    """The pictures a run's timeline is made of: per rendered epoch, the first image of each target.

    Its state goes into the callback's checkpoint state, so a resumed run continues the same timeline; a
    checkpoint rendered for other targets or another image size restarts it (with a warning), as does a render
    of other targets or another image size within the run. Adding an epoch that is already there replaces it.

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
        other_shape = bool(self.thumbs) and self.thumbs[0].shape != thumbs.shape
        if self._saved_tags is not None:
            if self._saved_tags != list(tags) or other_shape:
                message = "the checkpoint's timeline was rendered for other targets or another image size"
                self.warn("timeline", f"FeatureVisCallback: {message}; the timeline restarts with this run.")
                self.epochs, self.thumbs = [], []
            self._saved_tags = None
        elif self.thumbs and (self.tags != list(tags) or other_shape):
            # Rows must stay one target each (columns() stacks them): earlier epochs cannot be kept.
            message = "the timeline's targets or image size changed since the last rendered epoch"
            self.warn("timeline_changed", f"featvis: {message}; the timeline restarts at epoch {epoch}.")
            self.epochs, self.thumbs = [], []
        _put(self.epochs, self.thumbs, epoch, thumbs)  # a repeated epoch (a resumed render) replaces
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


class PurityHistory:
    """One layer's specialisation curve: per rendered epoch, the class purity of each channel's top examples.

    Purity is the share of a channel's top probe examples in their commonest class
    (:func:`featvis.probe.class_purity`); NaN for data without labels. Adding an epoch that is already there
    replaces it; other channels (tags) than those recorded restart the history, with a warning.

    Args:
        warn: ``warn(key, message)``, e.g. :class:`featvis.outputs.WarnOnce`.
    """

    def __init__(self, warn: Callable[[str, str], None]) -> None:
        self.warn = warn
        self.epochs: list[int] = []
        self.values: list[Tensor] = []  # per recorded epoch: (U,) float32
        self.tags: list[str] = []  # one per channel

    def add(self, epoch: int, purity: Tensor, tags: Sequence[str]) -> None:
        """Record ``purity`` ``(U,)`` of the channels ``tags`` (one each) at ``epoch``.

        Raises:
            ValueError: ``purity`` does not hold one value per tag.
        """
        purity = torch.as_tensor(purity).detach().float().cpu()
        if purity.shape != (len(tags),):
            raise ValueError(
                f"purity has shape {tuple(purity.shape)} but {len(tags)} channel tags were given; pass one "
                "value per channel."
            )
        if self.values and self.tags != list(tags):
            self.warn(
                "purity_changed",
                f"featvis: the channels changed since the last recorded epoch; the purity history restarts at "
                f"epoch {epoch}.",
            )
            self.epochs, self.values = [], []
        _put(self.epochs, self.values, epoch, purity)
        self.tags = list(tags)

    def columns(self) -> tuple[list[int], Tensor, list[str]]:
        """The recorded epochs in ascending order, the purity ``(E, U)`` in that order and the channel tags."""
        order = sorted(range(len(self.epochs)), key=self.epochs.__getitem__)
        values = torch.stack([self.values[i] for i in order]) if order else torch.empty(0, len(self.tags))
        return [self.epochs[i] for i in order], values, list(self.tags)

    def state_dict(self) -> dict[str, Any]:
        """The history as checkpoint state: epochs, tags and the ``(E, U)`` purity (None when empty)."""
        return {
            "epochs": list(self.epochs),
            "tags": list(self.tags),
            "purity": torch.stack(self.values) if self.values else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the history saved by :meth:`state_dict`."""
        self.epochs = [int(e) for e in state["epochs"]]
        self.tags = [str(t) for t in state["tags"]]
        purity = state.get("purity")
        self.values = list(torch.as_tensor(purity).float().unbind(0)) if purity is not None else []


class LayerHistory:
    """Per layer, a :class:`Timeline` and a :class:`PurityHistory`: the history of a run's channel sheets.

    Args:
        warn: ``warn(key, message)``; each layer's key and message name the layer.
    """

    #: The keys of :meth:`state_dict`.
    KEYS = ("timelines", "purity_history")

    def __init__(self, warn: Callable[[str, str], None]) -> None:
        self.warn = warn
        self.timelines: dict[str, Timeline] = {}
        self.purity: dict[str, PurityHistory] = {}

    def add(self, layer: str, epoch: int, rgb: Tensor, purity: Tensor, tags: Sequence[str]) -> None:
        """Record ``layer``'s render of ``epoch``: ``rgb`` ``(U, K, 3, H, W)``, ``purity`` ``(U,)``, one tag each."""
        self.timelines.setdefault(layer, Timeline(self._warn(layer))).add(epoch, rgb, tags)
        self.purity.setdefault(layer, PurityHistory(self._warn(layer))).add(epoch, purity, tags)

    def _warn(self, layer: str) -> Callable[[str, str], None]:
        def warn(key: str, message: str) -> None:
            self.warn(f"{layer}:{key}", f"{message} (layer {layer})")

        return warn

    def state_dict(self) -> dict[str, Any]:
        """``{"timelines": {layer: ...}, "purity_history": {layer: ...}}``, each layer's own state."""
        return {
            "timelines": {k: v.state_dict(v.tags) for k, v in self.timelines.items()},
            "purity_history": {k: v.state_dict() for k, v in self.purity.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the histories saved by :meth:`state_dict` (a missing key starts that one empty)."""
        self.timelines, self.purity = {}, {}
        for layer, saved in state.get("timelines", {}).items():
            self.timelines[layer] = Timeline(self._warn(layer))
            self.timelines[layer].load_state_dict(saved)
        for layer, saved in state.get("purity_history", {}).items():
            self.purity[layer] = PurityHistory(self._warn(layer))
            self.purity[layer].load_state_dict(saved)


def _put(epochs: list[int], values: list[Tensor], epoch: int, value: Tensor) -> None:
    """Record ``value`` for ``epoch``: replace the epoch's entry if it has one, else append."""
    if epoch in epochs:
        values[epochs.index(epoch)] = value
    else:
        epochs.append(epoch)
        values.append(value)


class UserWarnOnce:
    """``warn(key, message)`` for callers without their own: a ``UserWarning`` per key, once."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        """Warn with ``message`` unless ``key`` was warned about before."""
        if key not in self.seen:
            self.seen.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)


__all__ = ["LayerHistory", "PurityHistory", "Timeline", "UserWarnOnce"]
