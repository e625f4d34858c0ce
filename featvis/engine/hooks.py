"""Reading a model's hidden layers by name, and leaving the model and global state exactly as they were found.

Layers are named as in ``model.named_modules()``. :class:`LayerCapture` records the outputs of named layers with
forward hooks that it removes on exit; :func:`preserved_modes` puts a model in eval mode and restores every
submodule's own train/eval flag afterwards; :func:`fork_rng` does the same for the global random state, and
:func:`device_and_dtype` tells where a model computes.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def layer_names(model: nn.Module) -> list[str]:
    """Names of every submodule of ``model``, as ``model.named_modules()`` spells them (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``.

    Args:
        model: the network.
        name: a name from ``model.named_modules()``, e.g. ``"group1.conv1.conv"``.

    Raises:
        ValueError: no submodule has that name; the message lists the closest valid names.
    """
    modules = dict(model.named_modules())
    if isinstance(name, str) and name and name in modules:
        return modules[name]
    valid = layer_names(model)
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
    hint = f"closest valid names: {close}" if close else f"valid names include: {valid[:10]}"
    raise ValueError(f"unknown layer {name!r} in {type(model).__name__}; {hint}.")


class LayerCapture:
    """Context manager that records the outputs of named layers at every forward pass.

    The hooks exist only inside the ``with`` block, so the model carries no trace of them afterwards.

    Args:
        model: the network.
        names: layer names from ``model.named_modules()``; unknown names raise ValueError with suggestions.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.modules = {name: resolve_layer(model, name) for name in sorted(set(names))}
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def _hook_for(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} ({type(module).__name__}) returns {type(output).__name__}, not a tensor; "
                    "objectives need a layer whose output is a single tensor."
                )
            self.outputs[name] = output

        return hook

    def __enter__(self) -> LayerCapture:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook_for(name)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs = {}

    def take(self) -> dict[str, Tensor]:
        """The outputs recorded by the last forward pass; clears the record so stale tensors are not reused."""
        outputs, self.outputs = self.outputs, {}
        missing = set(self.modules) - set(outputs)
        if missing:
            raise RuntimeError(
                f"layers {sorted(missing)} were not called in the forward pass, so they have no activations."
            )
        return outputs


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode, and restore each submodule's own train/eval flag on exit.

    Eval mode keeps BatchNorm running statistics unchanged and dropout off while rendering.

    Args:
        model: the network.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a model's computation happens and in which float type: its first floating parameter or buffer.

    A model without floating tensors (e.g. an empty ``nn.Sequential``) computes on the CPU in float32.

    Args:
        model: the network.
    """
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def fork_rng(model: nn.Module) -> AbstractContextManager[Any]:
    """Save the global torch RNG state (CPU, and the CUDA device ``model`` lives on) and restore it on exit.

    For code around a render that calls the user's model: a model with dropout in train mode, or a user hook,
    may draw from the global generator, and training must not see a different random stream because of that.

    Args:
        model: the network whose device's generator is saved too.
    """
    device, _ = device_and_dtype(model)
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)
