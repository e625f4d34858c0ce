"""Objectives: what a rendered image should maximise, one value per image.

An :class:`Objective` maps the activations of a batch of images (:class:`Activations`: the model's logits plus the
outputs of named layers) to one value per image. Objectives combine with ``+``, ``-``, unary ``-`` and
multiplication or division by a number. Layers are named as in ``model.named_modules()``.

The renderer gives each objective only the activations of its own target's images, so group terms such as
:class:`Diversity` compare the images of one target with each other.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from featvis.engine.checks import check_choice, check_int, check_number


class Activations:
    """The logits and named-layer outputs of a batch of images.

    Args:
        logits: ``(N, num_classes)`` model outputs.
        layers: layer name to ``(N, ...)`` output of that layer.
    """

    def __init__(self, logits: Tensor, layers: Mapping[str, Tensor] | None = None) -> None:
        self.logits = logits
        self.layers = dict(layers or {})

    def __getitem__(self, name: str) -> Tensor:
        return self.layers[name]

    def __len__(self) -> int:
        return self.logits.shape[0]

    def select(self, index: slice) -> Activations:
        """The activations of the images ``index`` selects (views, no copies)."""
        return Activations(self.logits[index], {name: act[index] for name, act in self.layers.items()})


def _check_layer_name(layer: str) -> str:
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a non-empty name from model.named_modules(), got {layer!r}.")
    return layer


def _check_channel(layer: str, channel: int, activation: Tensor) -> None:
    if activation.ndim < 2:
        raise ValueError(
            f"layer {layer!r} outputs shape {tuple(activation.shape)}, which has no channel axis."
        )
    channels = activation.shape[1]
    if channel >= channels:
        raise ValueError(
            f"channel {channel} is out of range for layer {layer!r}, which has {channels} channels "
            f"(valid: 0..{channels - 1})."
        )


class Objective(ABC):
    """A quantity to maximise, one value per image; combine with ``+``, ``-`` and ``*`` by a number."""

    @property
    def layers(self) -> frozenset[str]:
        """Names of the layers whose outputs this objective reads."""
        return frozenset()

    @property
    @abstractmethod
    def description(self) -> str:
        """A short human-readable name, used in error messages and image captions."""

    @abstractmethod
    def __call__(self, activations: Activations) -> Tensor:
        """The value of each image, ``(N,)``, differentiable in the activations.

        Raises:
            ValueError: a class or channel index lies outside what the model has.
        """

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum(self._terms() + other._terms())

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-1.0) * other

    def __mul__(self, factor: float) -> Objective:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        if not math.isfinite(factor):
            raise ValueError(f"an objective can only be scaled by a finite number, got {factor}.")
        return Sum([(weight * float(factor), term) for weight, term in self._terms()])

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Objective:
        if isinstance(divisor, bool) or not isinstance(divisor, int | float):
            return NotImplemented
        if divisor == 0:
            raise ValueError("cannot divide an objective by zero.")
        return self * (1.0 / divisor)

    def __neg__(self) -> Objective:
        return self * -1.0

    def _terms(self) -> list[tuple[float, Objective]]:
        return [(1.0, self)]

    def __repr__(self) -> str:
        return self.description


class Sum(Objective):
    """A weighted sum of objectives (what ``+``, ``-`` and ``*`` build).

    Args:
        terms: ``(weight, objective)`` pairs; nested sums are flattened.
    """

    def __init__(self, terms: list[tuple[float, Objective]]) -> None:
        flat: list[tuple[float, Objective]] = []
        for weight, term in terms:
            flat += [(weight * inner_weight, inner) for inner_weight, inner in term._terms()]
        self.terms = flat

    def _terms(self) -> list[tuple[float, Objective]]:
        return list(self.terms)

    @property
    def layers(self) -> frozenset[str]:
        return frozenset().union(*(term.layers for _, term in self.terms))

    @property
    def description(self) -> str:
        text = ""
        for weight, term in self.terms:
            sign = "-" if weight < 0 else "+"
            magnitude = abs(weight)
            part = term.description if magnitude == 1 else f"{magnitude:g} * {term.description}"
            text = (f"-{part}" if sign == "-" else part) if not text else f"{text} {sign} {part}"
        return text

    def __call__(self, activations: Activations) -> Tensor:
        total: Tensor | None = None
        for weight, term in self.terms:
            value = weight * term(activations)
            total = value if total is None else total + value
        assert total is not None  # Sum is built from at least one term
        return total


class _LayerObjective(Objective):
    """An objective that reads one named layer, ``self.layer``."""

    layer: str

    @property
    def layers(self) -> frozenset[str]:
        return frozenset({self.layer})


class ClassLogit(Objective):
    """The logit of one class (the default objective: one per class).

    Args:
        index: class index.
        name: class name, for captions and error messages.
    """

    def __init__(self, index: int, name: str | None = None) -> None:
        self.index = check_int("class index", index, 0)
        self.name = name

    @property
    def description(self) -> str:
        return f"class {self.index}" + (f" ({self.name})" if self.name else "")

    def __call__(self, activations: Activations) -> Tensor:
        logits = activations.logits
        if logits.ndim != 2:
            raise ValueError(
                f"class objectives need (N, num_classes) logits, got shape {tuple(logits.shape)}."
            )
        num_classes = logits.shape[1]
        if self.index >= num_classes:
            raise ValueError(
                f"class index {self.index} is out of range: the model has {num_classes} classes "
                f"(valid: 0..{num_classes - 1})."
            )
        return logits[:, self.index].float()


class Channel(_LayerObjective):
    """The mean activation of one channel of a named layer.

    Args:
        layer: layer name from ``model.named_modules()``.
        channel: channel index (for a layer with ``(N, C)`` outputs, the unit).
    """

    def __init__(self, layer: str, channel: int) -> None:
        self.layer = _check_layer_name(layer)
        self.channel = check_int("channel", channel, 0)

    @property
    def description(self) -> str:
        return f"channel {self.layer}:{self.channel}"

    def __call__(self, activations: Activations) -> Tensor:
        act = activations[self.layer]
        _check_channel(self.layer, self.channel, act)
        return act[:, self.channel].float().reshape(act.shape[0], -1).mean(dim=1)


class Neuron(_LayerObjective):
    """One channel of a named layer at one spatial position (the centre by default).

    Args:
        layer: layer name from ``model.named_modules()``; its output must be ``(N, C, H, W)``.
        channel: channel index.
        y: row; None takes the centre row ``H // 2``.
        x: column; None takes the centre column ``W // 2``.
    """

    def __init__(self, layer: str, channel: int, y: int | None = None, x: int | None = None) -> None:
        self.layer = _check_layer_name(layer)
        self.channel = check_int("channel", channel, 0)
        self.y = None if y is None else check_int("neuron row y", y, 0)
        self.x = None if x is None else check_int("neuron column x", x, 0)

    @property
    def description(self) -> str:
        where = "centre" if self.y is None and self.x is None else f"y={self.y}, x={self.x}"
        return f"neuron {self.layer}:{self.channel} ({where})"

    def __call__(self, activations: Activations) -> Tensor:
        act = activations[self.layer]
        _check_channel(self.layer, self.channel, act)
        if act.ndim != 4:
            raise ValueError(
                f"neuron objectives need a layer with (N, C, H, W) outputs; {self.layer!r} gives "
                f"{tuple(act.shape)}."
            )
        height, width = act.shape[-2:]
        y = height // 2 if self.y is None else self.y
        x = width // 2 if self.x is None else self.x
        if y >= height or x >= width:
            raise ValueError(
                f"neuron position (y={y}, x={x}) is out of range for layer {self.layer!r}, whose maps are "
                f"{height}x{width} (valid: y in 0..{height - 1}, x in 0..{width - 1})."
            )
        return act[:, self.channel, y, x].float()


class LayerL2(_LayerObjective):
    """The mean squared activation of a whole layer (DeepDream).

    Args:
        layer: layer name from ``model.named_modules()``.
    """

    def __init__(self, layer: str) -> None:
        self.layer = _check_layer_name(layer)

    @property
    def description(self) -> str:
        return f"layer L2 {self.layer}"

    def __call__(self, activations: Activations) -> Tensor:
        act = activations[self.layer].float()
        return act.pow(2).reshape(act.shape[0], -1).mean(dim=1)


def _columns(activations: Tensor, groups: int) -> Tensor:
    """``(groups, n, positions, C)`` float columns of ``(groups * n, C, ...)`` activations: channels moved last.

    For a channels-last map (conv nets run channels-last on the CPU) this is a view, so the gradient flows back in
    the map's own memory layout. A contiguous gradient meeting a channels-last one made the GELU backward and the
    gradient sum behind the diversity layer several times slower (a tenth of a render with the term on).
    """
    count, channels = activations.shape[:2]
    return activations.movedim(1, -1).reshape(groups, count // groups, -1, channels).float()


def gram_matrices(activations: Tensor) -> Tensor:
    """Channel Gram matrices ``A A^T / positions`` of ``(N, C, ...)`` activations, shape ``(N, C, C)``."""
    columns = _columns(activations, 1)[0]
    return columns.transpose(1, 2) @ columns / columns.shape[1]


def gram_cosines(activations: Tensor) -> Tensor:
    """Cosine similarity between the channel Gram matrices of every pair of ``(N, C, ...)`` activations, ``(N, N)``.

    Equal to normalising the flattened :func:`gram_matrices` and taking their dot products, but without forming
    them when that is dearer: the Frobenius product of two Gram matrices is ``||A_i^T A_j||^2``, a product of
    ``N * positions`` columns (``N^2 P^2 C`` multiply-adds) instead of ``N`` Gram matrices (``N C^2 P``). A wide,
    small map (SpeedNet's ``group2``: 384 channels, 49 positions, 4 images) takes half the work that way, and
    no ``C x C`` matrix has to be normalised or differentiated. A zero Gram matrix has similarity 0 to all.
    """
    return grouped_gram_cosines(activations, 1)[0]


def grouped_gram_cosines(activations: Tensor, groups: int) -> Tensor:
    """:func:`gram_cosines` of each of ``groups`` consecutive equal groups of images, ``(groups, n, n)``.

    One batched product for all groups (a render's targets), instead of one small product, one slice and one
    gradient sum per group.
    """
    columns = _columns(activations, groups)
    _, count, positions, channels = columns.shape
    if count * positions < channels:
        flat = columns.reshape(groups, count * positions, channels)
        cross = (flat @ flat.transpose(1, 2)).reshape(groups, count, positions, count, positions)
        products = cross.square().sum(dim=(2, 4))
        norms = (
            products.diagonal(dim1=1, dim2=2).clamp_min(1e-24).sqrt()
        )  # clamped first: no NaN gradient at 0
        return products / norms[:, :, None] / norms[:, None, :]
    unit = F.normalize((columns.transpose(2, 3) @ columns).reshape(groups, count, -1), dim=2)
    return unit @ unit.transpose(1, 2)


DiversityKind = Literal["gram", "features"]
DIVERSITY_KINDS: tuple[str, ...] = get_args(DiversityKind)


class Diversity(_LayerObjective):
    """Rewards images of the same target that differ: minus the mean cosine similarity of each image's
    description at a named layer to those of the other images in its group, times ``weight``.

    The description is the layer's channel Gram matrix (``kind="gram"``, the seed's objective: the images differ
    in style, that is texture and colour statistics), or the layer's whole activation map (``"features"``: the
    images differ in what is where, so in pose, framing and layout as well). A group of one image gets 0. The
    renderer evaluates it on each target's images separately.

    Args:
        layer: layer name from ``model.named_modules()``.
        weight: strength of the term (>= 0).
        kind: ``"gram"`` or ``"features"``.
    """

    def __init__(self, layer: str, weight: float = 1.0, kind: DiversityKind = "gram") -> None:
        self.layer, self.weight = _check_layer_name(layer), check_number("diversity weight", weight, 0.0)
        self.kind = check_choice("diversity kind", kind, DIVERSITY_KINDS)

    @property
    def description(self) -> str:
        kind = "" if self.kind == "gram" else " (features)"
        return f"{self.weight:g} * diversity {self.layer}{kind}"

    def __call__(self, activations: Activations) -> Tensor:
        return self.grouped(activations, 1)[0]

    def grouped(self, activations: Activations, groups: int) -> Tensor:
        """``(groups, n)``: the term on each of ``groups`` consecutive equal groups of images, in one batched pass.

        Args:
            activations: the activations of ``groups * n`` images (a render's targets, ``n`` images each).
            groups: how many groups; images of different groups are not compared.
        """
        act = activations[self.layer]
        count = act.shape[0] // groups
        if count * groups != act.shape[0]:
            raise ValueError(f"{act.shape[0]} images do not split into {groups} equal groups.")
        if count < 2:
            return act.new_zeros(groups, count, dtype=torch.float32)
        if self.kind == "gram":
            similarity = grouped_gram_cosines(act, groups)
        else:
            unit = F.normalize(_columns(act, groups).reshape(groups, count, -1), dim=2)
            similarity = unit @ unit.transpose(1, 2)
        # Mean over the other images: drop the diagonal (each image's similarity to itself is 1).
        others = (similarity.sum(dim=2) - similarity.diagonal(dim1=1, dim2=2)) / (count - 1)
        return -self.weight * others


def as_objective(target: Objective | int, class_names: list[str] | None = None) -> Objective:
    """An objective from an objective or a class index.

    Args:
        target: an :class:`Objective`, or an ``int`` meaning that class's logit.
        class_names: names used to caption class objectives.
    """
    if isinstance(target, Objective):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        index = check_int("class index", target, 0)
        name = class_names[index] if class_names is not None and index < len(class_names) else None
        return ClassLogit(index, name)
    raise TypeError(f"a render target must be an Objective or a class index, got {type(target).__name__}.")


def class_names_of(*sources: object) -> list[str] | None:
    """Class names from the first source that has them: its ``classes`` (a datamodule) or ``class_names``.

    Args:
        sources: objects to ask in order, e.g. the datamodule, then the model; None entries are skipped.

    Returns:
        The names as strings, or None when no source names its classes.
    """
    for source in sources:
        for attribute in ("classes", "class_names"):
            names = getattr(source, attribute, None)
            if isinstance(names, Sequence) and not isinstance(names, str) and len(names) > 0:
                return [str(name) for name in names]
    return None
