"""What to render: class indices or names, layer channels and neurons, turned into objectives and tags.

The callback and ``featvis render`` both describe their targets the same way (classes by index or name, and
optionally the channels of one layer) and get the same :class:`Target` list back: the engine objective, the tag
that names it in TensorBoard and on disk, and the class it stands for. One spelling of tags everywhere: a class's
name, ``<layer>.ch<c>`` for a channel and ``<layer>.neuron<c>`` for a channel's centre neuron.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from featvis.engine import (
    Channel,
    ClassLogit,
    LayerCapture,
    Neuron,
    Objective,
    device_and_dtype,
    fork_rng,
    preserved_modes,
    resolve_layer,
)
from featvis.engine.checks import check_bool, check_int
from featvis.images import safe_name

#: Tags the callback uses for pictures of all targets; a target named like one gets a trailing underscore.
RESERVED_TAGS = frozenset({"all", "timeline"})
#: The layer name that asks for :func:`auto_layer`'s choice.
AUTO_LAYER = "auto"


@dataclass(frozen=True)
class TargetSpec:
    """What to render, as a user says it: classes, and optionally channels or neurons of one layer.

    Args:
        classes: class indices or names; None renders every class unless ``layer`` is set.
        layer: also render channels of this layer (a name from ``model.named_modules()``, or ``"auto"``: the
            last spatial block, see :func:`auto_layer`).
        channels: channel indices of ``layer``; None takes its first ``min(10, width)`` channels.
        neuron: render each channel's centre neuron instead of its mean activation.

    Raises:
        ValueError: a malformed list, a negative index, or channels/neuron without a layer.
    """

    classes: Sequence[int | str] | None = None
    layer: str | None = None
    channels: Sequence[int] | None = None
    neuron: bool = False

    def __post_init__(self) -> None:
        classes, layer, channels = self.classes, self.layer, self.channels
        if classes is not None and (isinstance(classes, str | int) or len(classes) == 0):
            raise ValueError(
                f"targets must be a non-empty list of class indices or names, or None; got {classes!r}."
            )
        for target in classes or []:
            if not isinstance(target, str):
                check_int("class index", target, 0)
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"layer must be a non-empty layer name or None, got {layer!r}.")
        if (channels is not None or check_bool("neuron", self.neuron)) and layer is None:
            raise ValueError(
                f"{'channels' if channels is not None else 'neuron=True'} needs layer: name the layer whose channels should be rendered."
            )
        if channels is not None and (isinstance(channels, int) or len(channels) == 0):
            raise ValueError(f"channels must be a non-empty list of channel indices, got {channels!r}.")
        for channel in channels or []:
            check_int("channel", channel, 0)

    def resolve(
        self, model: nn.Module, size: int | tuple[int, int], class_names: Sequence[str] | None
    ) -> list[Target]:
        """The targets for ``model`` (see :func:`resolve_targets`)."""
        return resolve_targets(
            model,
            size,
            classes=self.classes,
            class_names=class_names,
            layer=self.layer,
            channels=self.channels,
            neuron=self.neuron,
        )


@dataclass(frozen=True)
class Target:
    """One thing to render.

    Attributes:
        objective: what the engine maximises.
        tag: its name in TensorBoard tags and PNG folders (unique within a render, file-name safe).
        class_index: the class a class target shows; None for a hidden-unit target.
    """

    objective: Objective
    tag: str
    class_index: int | None


def class_index(target: int | str, class_names: Sequence[str] | None) -> int:
    """The class index of a target given as an index, a class name, or a string of digits.

    Args:
        target: e.g. ``3``, ``"cat"`` or ``"3"``.
        class_names: the classes' names in label order; None when nothing names them.

    Raises:
        ValueError: an unknown name or an index out of range; the message lists the valid ones.
    """
    names = list(class_names) if class_names is not None else None
    if isinstance(target, str):
        if names is not None and target in names:
            return names.index(target)
        if not target.lstrip("-").isdigit():
            if names is None:
                raise ValueError(
                    f"class name {target!r} cannot be resolved: neither the datamodule (classes) nor the model "
                    "(class_names) names the classes; pass class indices instead."
                )
            raise ValueError(
                f"unknown class {target!r}; valid names: {names} (or indices 0..{len(names) - 1})."
            )
        target = int(target)
    check_int("class index", target, 0)
    if names is not None and target >= len(names):
        raise ValueError(
            f"class index {target} is out of range: there are {len(names)} classes (valid: 0..{len(names) - 1})."
        )
    return target


def probe(
    model: nn.Module, layers: Sequence[str], size: int | tuple[int, int]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and layer outputs of one all-zero image: how many classes and channels the model has.

    No side effects: eval mode, no gradients, global RNG and train/eval flags restored.

    Raises:
        ValueError: a layer name that the model does not have (closest names listed).
        RuntimeError: a layer that exists but that the forward pass never calls.
    """
    height, width = (size, size) if isinstance(size, int) else size
    device, dtype = device_and_dtype(model)
    with observed(model, layers) as capture:
        logits = model(torch.zeros(1, 3, height, width, device=device, dtype=dtype))
        return logits, capture.take()


@contextmanager
def observed(model: nn.Module, layers: Sequence[str]) -> Iterator[LayerCapture]:
    """Forward passes that read ``layers`` and leave no trace: eval mode, no gradients, RNG and flags restored.

    Also outside inference mode, so the captured tensors are ordinary ones even in a Lightning validation loop.

    Args:
        model: the network.
        layers: names from ``model.named_modules()`` (unknown ones raise ValueError with the closest names).
    """
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        fork_rng(model),
        preserved_modes(model),
        LayerCapture(model, layers) as capture,
    ):
        yield capture


def no_channel_axis(layer: str, shape: Sequence[int]) -> str:
    """The error message for a layer whose output ``shape`` has no channel axis, with the fix."""
    return (
        f"layer {layer!r} outputs shape {tuple(shape)}, which has no channel axis; choose a layer with "
        "(N, C) or (N, C, H, W) outputs (or layer: auto)."
    )


def _outputs_in_call_order(model: nn.Module, size: int | tuple[int, int]) -> list[tuple[str, torch.Size]]:
    """``(name, output shape)`` of every named submodule each time the probe forward pass finishes it.

    Hooks fire when a module returns, so a container comes after its children, and a module called twice (a
    ReLU shared by a residual block) appears twice. Non-tensor outputs are left out.
    """
    finished: list[tuple[str, torch.Size]] = []

    def record(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, Tensor):
                finished.append((name, output.shape))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        probe(model, [], size)
    finally:
        for handle in handles:
            handle.remove()
    return finished


def called_layers(model: nn.Module, size: int | tuple[int, int]) -> list[str]:
    """Names of the layers that the model's forward pass calls and whose output has a channel axis.

    In ``named_modules()`` order (a container before its children), not in the order the layers ran.
    """
    called = {name for name, shape in _outputs_in_call_order(model, size) if len(shape) >= 2}
    return [name for name, _ in model.named_modules() if name in called]


def auto_layer(model: nn.Module, size: int | tuple[int, int]) -> str:
    """The layer that ``layer: auto`` stands for: the last spatial block of the network.

    The rule: of all named submodules, the one whose output is the last to be finished in a forward pass of one
    image at the render ``size`` while it is still spatial, ``(N, C, H, W)`` with ``H > 1`` and ``W > 1``. That
    is the deepest feature map before global pooling; when a container (a residual stage, a conv group) and its
    last child produce it, the container wins, because it finishes last (``layer4`` of a ResNet,
    ``net.group3`` of featvis's SpeedNet).

    Args:
        model: maps model-space images ``(N, 3, H, W)`` to logits.
        size: image size of the render.

    Raises:
        ValueError: no layer gives spatial outputs at this size.
    """
    spatial = [
        name for name, shape in _outputs_in_call_order(model, size) if len(shape) == 4 and min(shape[2:]) > 1
    ]
    if not spatial:
        raise ValueError(
            f"layer: auto found no layer with spatial (N, C, H>1, W>1) outputs in {type(model).__name__} at "
            f"image size {size}; name a layer instead, one of: {', '.join(called_layers(model, size))}."
        )
    return spatial[-1]


def resolve_layer_name(model: nn.Module, name: str, size: int | tuple[int, int]) -> str:
    """``name`` itself when the model has such a layer; :func:`auto_layer` for ``"auto"``.

    Raises:
        ValueError: an unknown layer (the message lists the closest names).
    """
    if name == AUTO_LAYER:
        return auto_layer(model, size)
    resolve_layer(model, name)
    return name


def layer_width(model: nn.Module, layer: str, size: int | tuple[int, int]) -> int:
    """Number of channels of ``layer``'s output (its axis 1).

    Raises:
        ValueError: an unknown layer, a layer that forward never calls, or one whose output has no channel axis.
    """
    try:
        _, acts = probe(model, [layer], size)
    except RuntimeError as err:  # a module that exists but that the forward pass never calls
        called = ", ".join(called_layers(model, size))
        raise ValueError(
            f"layer {layer!r} is not called by the model's forward pass; choose one of: {called}."
        ) from err
    act = acts[layer]
    if act.ndim < 2:
        raise ValueError(no_channel_axis(layer, act.shape))
    return int(act.shape[1])


def resolve_targets(
    model: nn.Module,
    size: int | tuple[int, int],
    *,
    classes: Sequence[int | str] | None = None,
    class_names: Sequence[str] | None = None,
    layer: str | None = None,
    channels: Sequence[int] | None = None,
    neuron: bool = False,
) -> list[Target]:
    """The targets to render, classes first, then the layer's channels.

    Args:
        model: the classifier (asked for its class count or a layer's width when those are not given).
        size: image size of the render, for that probe.
        classes: class indices or names; None renders every class unless ``layer`` is set.
        class_names: the classes' names in label order; None when nothing names them (tags are then indices).
        layer: also render channels of this layer (a name from ``model.named_modules()``, or ``"auto"`` for
            :func:`auto_layer`'s choice).
        channels: channel indices of ``layer``; None takes its first ``min(10, width)`` channels.
        neuron: render each channel's centre neuron instead of its mean activation.

    Raises:
        ValueError: an unknown class, layer or channel; the message lists the valid ones.
    """
    if classes is not None:
        indices = [class_index(target, class_names) for target in classes]
    elif layer is None:
        count = len(class_names) if class_names is not None else int(probe(model, [], size)[0].shape[-1])
        indices = list(range(count))
    else:
        indices = []
    labels: list[str] = []
    objectives: list[Objective] = []
    for index in indices:
        name = class_names[index] if class_names is not None and index < len(class_names) else str(index)
        objectives.append(ClassLogit(index, name))
        labels.append(name)
    if layer is not None:
        layer = resolve_layer_name(model, layer, size)
        width = layer_width(model, layer, size)
        for channel in channels if channels is not None else range(min(10, width)):
            check_int("channel", channel, 0)
            if channel >= width:
                raise ValueError(
                    f"channel {channel} is out of range: layer {layer!r} has {width} channels (valid: 0..{width - 1})."
                )
            objectives.append(Neuron(layer, channel) if neuron else Channel(layer, channel))
            labels.append(f"{layer}.{'neuron' if neuron else 'ch'}{channel}")
    classes_of = [*indices, *[None] * (len(objectives) - len(indices))]
    return [
        Target(objective, tag, cls)
        for objective, tag, cls in zip(objectives, unique_tags(labels), classes_of, strict=True)
    ]


def image_size_of(*sources: object) -> int | None:
    """The image size a datamodule or model declares: its ``image_size``, else ``example_input_array``'s width.

    Args:
        sources: objects to ask in order, e.g. the datamodule, then the model; None entries are skipped.
    """
    for source in sources:
        size = getattr(source, "image_size", None)
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    for source in sources:
        example = getattr(source, "example_input_array", None)
        if isinstance(example, Tensor) and example.ndim == 4:
            return int(example.shape[-1])
    return None


def unique_tags(labels: Sequence[str]) -> list[str]:
    """File- and tag-safe names, made unique with ``_2``, ``_3``, ... and kept off :data:`RESERVED_TAGS`."""
    tags: list[str] = []
    for label in labels:
        tag = safe_name(label)
        if tag in RESERVED_TAGS:
            tag = f"{tag}_"
        base, n = tag, 1
        while tag in tags:
            n += 1
            tag = f"{base}_{n}"
        tags.append(tag)
    return tags


__all__ = [
    "AUTO_LAYER",
    "RESERVED_TAGS",
    "Target",
    "TargetSpec",
    "auto_layer",
    "called_layers",
    "class_index",
    "image_size_of",
    "layer_width",
    "no_channel_axis",
    "observed",
    "probe",
    "resolve_layer_name",
    "resolve_targets",
    "unique_tags",
]
