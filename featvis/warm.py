"""Warm start of the channel sheets: each epoch's render begins from the last one's images, unless a channel moved.

A warm-started render continues the last epoch's images for the model as it is now, in fewer steps. Between two
real epochs of the default model (epochs 1 and 2, 16 channels of ``net.group3``; ``python -m
benchmarks.hidden_units --mode warm``) a quarter of the steps reached the cold render's objective and robustness,
and half the steps exceeded them by 12%. But when a channel changes what it detects, its last image no longer
excites it, and a warm render falls short: on a tiny model with a reversed filter, half the steps from the old
image reached only 0.2-0.8 of a cold render's objective (``tests/test_hidden.py``).

So before each warm start :class:`WarmStart` shows the last images to the model as it is now. If any channel's
activation on its last image fell below ``stale`` (default 0.3) of its activation when it was rendered, that
channel has forgotten what it detected, and the whole render starts cold, from noise, at the full steps: the
timeline then shows the new feature rather than a faded copy of the old one. The threshold comes from measuring
the share kept: on the tiny model, filters turned by 30, 60, 90 and 180 degrees keep 0.84, 0.53, 0.12 and 0.06
(a warm render reaches 0.99 of a cold one at 30 degrees, 0.67 at 90 and 0.43 at 180); between epochs 1 and 2
of the default model the 16 channels keep 0.45-1.18, and warm renders matched cold ones in a quarter of the
steps. The check costs two forward passes of the rendered images (one when they are recorded, one before the
next render).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from featvis.colour import InputSpace
from featvis.engine import device_and_dtype
from featvis.probe import layer_activations

#: Measures images: ``(N, 3, H, W)`` RGB in [0, 1] -> ``(N,)`` each image's own unit's activation.
Measure = Callable[[Tensor], Tensor]


class WarmStart:
    """The last render's image parameters, and whether the next render may start from them.

    Args:
        stale: the smallest share of its recorded activation that a channel's last image must keep on the
            current model for a warm start, in [0, 1]; 0 always warm-starts (when the render matches).
    """

    def __init__(self, stale: float = 0.3) -> None:
        if not 0.0 <= float(stale) <= 1.0:
            raise ValueError(f"stale must be a share in [0, 1], got {stale!r}.")
        self.stale = float(stale)
        self.tags: list[str] = []
        self.signature: list[Any] = []
        self.parameters: Tensor | None = None
        self.rgb: Tensor | None = None  # (N, 3, H, W) the last images, on the CPU
        self.values: Tensor | None = None  # (N,) their activations on the model they were rendered for
        self.last_ratio = float("nan")  # the smallest kept share at the last check (NaN: not checked)

    def record(
        self, tags: Sequence[str], signature: Sequence[Any], parameters: Tensor, rgb: Tensor, measure: Measure
    ) -> None:
        """Keep a finished render to start the next one from.

        Args:
            tags: the rendered units, in batch order (each has ``N / len(tags)`` images).
            signature: what else must match (size, images per unit, parameterisation).
            parameters: the render's image parameters (:attr:`featvis.engine.RenderResult.parameters`).
            rgb: ``(N, 3, H, W)`` its images.
            measure: each image's activation of its own unit, on the model as rendered.
        """
        self.tags, self.signature = list(tags), list(signature)
        self.parameters, self.rgb = parameters.detach().cpu(), rgb.detach().float().cpu()
        self.values = measure(self.rgb).detach().float().cpu()

    def start(self, tags: Sequence[str], signature: Sequence[Any], measure: Measure) -> Tensor | None:
        """The parameters to warm-start a render of ``tags`` from, or None to render cold.

        None when nothing matching was recorded, or when a unit's last image keeps less than ``stale`` of its
        recorded activation on the model as it is now (measured with ``measure``).
        """
        if self.parameters is None or (list(tags), list(signature)) != (self.tags, self.signature):
            return None
        assert self.rgb is not None and self.values is not None
        now = measure(self.rgb).detach().float().cpu()
        # Per unit: a unit whose images lost their activation (or that was never active) starts everything cold.
        units = len(self.tags)
        before = self.values.view(units, -1).mean(dim=1)
        after = now.view(units, -1).mean(dim=1)
        ratio = torch.where(before > 0, after / before.clamp_min(1e-12), torch.zeros_like(before))
        self.last_ratio = float(ratio.min())
        return self.parameters if self.last_ratio >= self.stale else None

    def state_dict(self) -> dict[str, Any]:
        """The recorded render (empty before the first one)."""
        if self.parameters is None:
            return {}
        tensors = {"parameters": self.parameters, "rgb": self.rgb, "values": self.values}
        return {"tags": list(self.tags), "signature": list(self.signature)} | {
            key: value.clone() for key, value in tensors.items() if value is not None
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (an empty or missing state forgets the recorded render)."""
        if not state or "rgb" not in state:
            self.tags, self.signature, self.parameters, self.rgb, self.values = [], [], None, None, None
            return
        self.tags, self.signature = list(state["tags"]), list(state["signature"])
        self.parameters = torch.as_tensor(state["parameters"])
        self.rgb, self.values = torch.as_tensor(state["rgb"]), torch.as_tensor(state["values"])


def unit_measure(
    model: nn.Module,
    colour: InputSpace | None,
    layers: Sequence[str],
    chosen: Mapping[str, Sequence[int]],
    images: int,
    neuron: bool,
) -> Callable[[Tensor], Tensor]:
    """A :data:`Measure` for a batched render of channels: each image's activation of its own channel.

    Args:
        model: the network as it is now.
        colour: its input space (RGB in [0, 1] -> model space); None: RGB.
        layers: the rendered layers, in batch order.
        chosen: per layer, its channels, in batch order.
        images: images per channel.
        neuron: measure the centre neuron instead of the channel mean.
    """

    device = device_and_dtype(model)[0]

    def measure(rgb: Tensor) -> Tensor:
        # The recorded images are kept on the CPU; the input space lives where the model does (e.g. CUDA).
        rgb = rgb.to(device)
        x = colour.to_model(rgb) if colour is not None else rgb
        acts, values, row = layer_activations(model, layers, x, neuron=neuron), [], 0
        for layer in layers:
            channels = torch.tensor(list(chosen[layer])).repeat_interleave(images)
            values.append(acts[layer][row : row + len(channels)].gather(1, channels[:, None]).squeeze(1))
            row += len(channels)
        return torch.cat(values)

    return measure


__all__ = ["Measure", "WarmStart", "unit_measure"]
