"""The fixed probe set of training images and what hidden units do on it: top examples, choice, purity, agreement.

Pure PyTorch (no Lightning). A :class:`ProbeSet` is a few hundred training images drawn once per run with the
run's seed (a private ``torch.Generator``), so every epoch's dataset examples come from the same images and a
resumed run, given the saved indices, reads the same ones again. :func:`layer_activations` measures each channel of
named layers on those images in one batched forward pass with no side effects, the way the engine's objectives
measure a rendered image: a channel's spatial mean activation (:class:`~featvis.engine.Channel`), or its centre
neuron (:class:`~featvis.engine.Neuron`), so "the visualisation excites the unit more than its best example"
compares like with like. The other functions turn those activations into the views of a channel sheet:
:func:`top_examples`, :func:`choose_channels`, :func:`class_purity` and :func:`agreement`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from featvis.basis import forked_random_states, private_loader
from featvis.colour import ColourTransform, InputSpace
from featvis.engine import device_and_dtype
from featvis.engine.checks import check_choice, check_int
from featvis.targets import no_channel_axis, observed

Rule = Literal["selectivity", "kurtosis", "variance", "change"]
RULES: tuple[str, ...] = ("selectivity", "kurtosis", "variance", "change")


@dataclass(frozen=True)
class ProbeSet:
    """A fixed set of training images: the run's dataset examples come from these, every epoch.

    Attributes:
        images: ``(P, C, H, W)`` float32 model-space images on the CPU (what the model is fed).
        rgb: ``(P, 3, H, W)`` the same images as RGB in [0, 1], for display.
        labels: ``(P,)`` int64 class labels, or None when the data has none.
        indices: ``(P,)`` int64 dataset indices the images were read from, ascending (saved in checkpoints).
    """

    images: Tensor
    rgb: Tensor
    labels: Tensor | None
    indices: Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())

    @staticmethod
    def choose(count: int, size: int, seed: int) -> Tensor:
        """``min(size, count)`` distinct indices of ``range(count)``, ascending, drawn with ``seed`` alone.

        Args:
            count: number of images in the dataset.
            size: images wanted.
            seed: seed of the private generator (the same seed always gives the same indices).
        """
        check_int("probe_size", size, 1)
        if count < 1:
            raise ValueError("the training data is empty: there are no images to probe the units with.")
        generator = torch.Generator().manual_seed(check_int("seed", seed))
        return torch.randperm(count, generator=generator)[: min(size, count)].sort().values

    @classmethod
    def from_tensors(
        cls,
        images: Tensor,
        labels: Tensor | None,
        seed: int,
        size: int,
        colour: InputSpace | None = None,
        *,
        indices: Tensor | None = None,
    ) -> ProbeSet:
        """The probe set drawn from images already in memory (e.g. a datamodule's ``split("train")``).

        Args:
            images: ``(N, 3, H, W)``: uint8 RGB (0..255, mapped to model space with ``colour``) or float
                model-space images (mapped back to RGB for display with ``colour``).
            labels: ``(N,)`` class labels, or None.
            seed: seed of the draw (see :meth:`choose`).
            size: images in the probe set (all of them when there are fewer).
            colour: the model's input space; None means RGB in [0, 1].
            indices: the saved indices of a resumed run (:meth:`state_dict`); None draws them with ``seed``.
        """
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}.")
        if labels is not None and labels.shape != images.shape[:1]:
            raise ValueError(
                f"expected {len(images)} labels, one per image, got shape {tuple(labels.shape)}."
            )
        chosen = cls.choose(len(images), size, seed) if indices is None else _checked(indices, len(images))
        picked = images[chosen]
        return cls._build(picked, None if labels is None else labels[chosen], chosen, colour)

    @classmethod
    def from_loader(
        cls,
        loader: DataLoader,
        size: int,
        seed: int,
        colour: InputSpace | None = None,
        *,
        indices: Tensor | None = None,
        model: nn.Module | None = None,
    ) -> ProbeSet:
        """The probe set read from a training dataloader's (map-style) dataset.

        The chosen indices are read in order through a private ``DataLoader`` with ``loader``'s ``collate_fn``,
        ``num_workers`` and batch size, as :func:`featvis.basis.read_training_images` reads: ``loader`` itself,
        its sampler and its generators are not touched, and the global torch, Python and NumPy random states
        are restored afterwards (a dataset's random transforms may draw from them).

        Args:
            loader: the run's training dataloader; its batches hold images ``(N, C, H, W)`` (model space, or
                uint8 RGB) as the first image tensor of a tuple, list or dict, and optionally integer labels.
            size: images in the probe set.
            seed: seed of the draw (see :meth:`choose`).
            colour: the model's input space; None means RGB in [0, 1].
            indices: the saved indices of a resumed run; None draws them with ``seed``.
            model: the network, whose CUDA generator is saved too; None saves the CPU one only.

        Raises:
            ValueError: an iterable dataset (no indices to draw from), or batches without an image tensor.
        """
        dataset = loader.dataset
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"the training dataset is a {type(dataset).__name__} without indices; build the probe set with "
                "ProbeSet.from_tensors(images, labels, seed, size) instead."
            )
        count = len(dataset)
        chosen = cls.choose(count, size, seed) if indices is None else _checked(indices, count)
        with forked_random_states(model if model is not None else nn.Module()):
            images, labels = _read(loader, Subset(dataset, chosen.tolist()))
        return cls._build(images, labels, chosen, colour)

    @classmethod
    def _build(
        cls, images: Tensor, labels: Tensor | None, indices: Tensor, colour: InputSpace | None
    ) -> ProbeSet:
        colour = (colour or ColourTransform.identity()).copy("cpu", torch.float32)
        if images.dtype == torch.uint8:  # stored RGB (a datamodule's split): the model gets model space
            rgb = images.float() / 255
            model_space = colour.to_model(rgb)
        else:
            model_space = images.detach().to("cpu", torch.float32)
            rgb = colour.to_rgb(model_space).clamp(0, 1)
        labels = None if labels is None else labels.detach().to("cpu", torch.int64)
        return cls(model_space.contiguous(), rgb.contiguous(), labels, indices.to(torch.int64))

    def state_dict(self) -> dict[str, Tensor]:
        """``{"indices": ...}``: pass them back as ``indices=`` to rebuild the same probe set on resume."""
        return {"indices": self.indices.clone()}


def _checked(indices: Tensor, count: int) -> Tensor:
    """Saved indices, validated against the dataset they are read from."""
    indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
    if indices.numel() == 0 or int(indices.min()) < 0 or int(indices.max()) >= count:
        raise ValueError(
            f"the saved probe indices do not fit a dataset of {count} images; the checkpoint belongs to other "
            "data: resume with the data it was trained on, or start a new run."
        )
    return indices


def _read(loader: DataLoader, subset: Subset) -> tuple[Tensor, Tensor | None]:
    """Images and labels of ``subset``, in order, through a private copy of ``loader``'s settings."""
    private = private_loader(loader, subset)
    images: list[Tensor] = []
    labels: list[Tensor] = []
    for batch in private:
        image, label = _fields(batch)
        images.append(image.detach().cpu())
        if label is not None:
            labels.append(label.detach().cpu())
    return torch.cat(images), torch.cat(labels) if len(labels) == len(images) else None


def _fields(batch: object) -> tuple[Tensor, Tensor | None]:
    """The first image tensor of a batch (or of one unbatched sample) and the first integer label tensor after it."""
    values = list(batch.values()) if isinstance(batch, Mapping) else batch
    entries: list[object] = list(values) if isinstance(values, list | tuple) else [values]
    image_at = next(
        (i for i, e in enumerate(entries) if isinstance(e, Tensor) and e.ndim in (3, 4) and e.shape[-3] <= 4),
        None,
    )
    if image_at is None:
        raise ValueError(
            "the training batches hold no (N, C, H, W) image tensor; build the probe set with "
            "ProbeSet.from_tensors(images, labels, seed, size) instead."
        )
    image = entries[image_at]
    assert isinstance(image, Tensor)  # found above
    single = image.ndim == 3  # a dataset that is read one sample at a time
    found = next((e for e in entries[image_at + 1 :] if _is_label(e, single)), None)
    label = None if found is None else torch.as_tensor(found)
    if single:
        return image.unsqueeze(0), None if label is None else label.reshape(1)
    return image, label


def _is_label(entry: object, single: bool) -> bool:
    if isinstance(entry, Tensor):
        return not entry.is_floating_point() and entry.ndim == (0 if single else 1)
    return single and isinstance(entry, int) and not isinstance(entry, bool)


def layer_activations(
    model: nn.Module,
    layers: Sequence[str],
    images: Tensor,
    *,
    neuron: bool = False,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Every channel of each named layer on each image: ``{layer: (P, channels)}`` float32 on the CPU.

    A channel's value is its spatial mean activation (what :class:`~featvis.engine.Channel` maximises), or with
    ``neuron`` its centre neuron (:class:`~featvis.engine.Neuron`); an ``(N, F)`` layer's channels are its
    features. One forward pass per ``batch_size`` images, in full precision, with no side effects: eval mode
    and every submodule's own train/eval flag restored (BatchNorm statistics do not move), no gradients, and the
    global RNG restored.

    Args:
        model: maps model-space images to logits.
        layers: names from ``model.named_modules()``.
        images: ``(P, C, H, W)`` model-space images (any device; moved batch by batch to the model's).
        neuron: centre neurons instead of channel means.
        batch_size: images per forward pass.

    Raises:
        ValueError: an unknown layer (closest names listed), a layer with no channel axis, or ``neuron`` for a
            layer without ``(N, C, H, W)`` outputs.
    """
    check_int("batch_size", batch_size, 1)
    device, dtype = device_and_dtype(model)
    parts: dict[str, list[Tensor]] = {name: [] for name in layers}
    with observed(model, layers) as capture:
        for batch in images.split(batch_size):
            model(batch.to(device, dtype))
            for name, act in capture.take().items():
                parts[name].append(_per_channel(name, act, neuron).float().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def unit_activations(
    model: nn.Module, layer: str, images: Tensor, *, neuron: bool = False, batch_size: int = 256
) -> Tensor:
    """``(P, channels)``: :func:`layer_activations` of one layer."""
    return layer_activations(model, [layer], images, neuron=neuron, batch_size=batch_size)[layer]


def _per_channel(name: str, act: Tensor, neuron: bool) -> Tensor:
    if act.ndim < 2:
        raise ValueError(no_channel_axis(name, act.shape))
    if neuron:
        if act.ndim != 4:
            raise ValueError(
                f"neuron objectives need a layer with (N, C, H, W) outputs; {name!r} gives {tuple(act.shape)}: "
                "set neuron: false or choose a spatial layer."
            )
        return act[:, :, act.shape[2] // 2, act.shape[3] // 2]
    return act.flatten(2).mean(dim=2) if act.ndim > 2 else act


def _ranked(scores: Tensor) -> Tensor:
    """Indices that sort the last axis from highest to lowest score, ties by lower index (deterministic)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def top_examples(acts: Tensor, channels: Sequence[int], n: int) -> Tensor:
    """``(len(channels), n)`` probe positions of each channel's ``n`` highest activations, highest first.

    Args:
        acts: ``(P, C)`` activations (:func:`unit_activations`).
        channels: channel indices.
        n: examples per channel (at most ``P``).
    """
    check_int("examples", n, 1)
    if n > acts.shape[0]:
        raise ValueError(f"examples={n} is more than the {acts.shape[0]} probe images; lower it.")
    return _ranked(acts[:, list(channels)].T)[:, :n]


def choose_channels(
    acts: Tensor,
    k: int,
    rule: Rule = "selectivity",
    previous: Tensor | None = None,
    *,
    examples: int = 6,
) -> list[int]:
    """The ``k`` most informative channels on the probe set, most informative first (deterministic).

    ``"selectivity"`` (the default): how far the weakest of the channel's top ``examples`` activations lies
    above its typical one, ``(n-th highest - median) / MAD`` over the probe images: channels that respond
    strongly to a few images and little to the rest, so that every example shown stands out; fewer than ``n``
    outlier images cannot carry it (shift- and scale-free; constant channels score 0). ``"kurtosis"``: the kurtosis of the activations, a selectivity that one outlier image can carry.
    ``"variance"``: the highest variance of the activations. ``"change"``: the largest change of the channel's
    activation pattern over the probe images since ``previous`` (one minus the correlation of the two patterns:
    what the channel responds to changed, not merely its scale); without ``previous`` (the first epoch) it falls
    back to ``"selectivity"``. Measured in ``benchmarks.hidden_units`` (see its README table).

    Args:
        acts: ``(P, C)`` activations now.
        k: channels to choose.
        rule: ``"selectivity"``, ``"kurtosis"``, ``"variance"`` or ``"change"``.
        previous: ``(P, C)`` activations of the same probe images at the previous epoch, for ``"change"``.
        examples: top examples shown per channel (``n`` of ``"selectivity"``).

    Raises:
        ValueError: ``k`` above the channel count, an unknown rule, or ``previous`` of another shape.
    """
    check_int("k", k, 1)
    check_choice("rule", rule, RULES)
    channels = acts.shape[1]
    if k > channels:
        raise ValueError(f"k={k} channels asked of a layer that has {channels}; set k <= {channels}.")
    acts = acts.float()
    if rule == "change" and previous is not None:
        if previous.shape != acts.shape:
            raise ValueError(
                f"previous activations have shape {tuple(previous.shape)}, not {tuple(acts.shape)}: the probe "
                "set or the layer changed since the last epoch."
            )
        score = (_standardised(acts) - _standardised(previous)).pow(2).mean(dim=0) / 2
    elif rule == "variance":
        score = acts.var(dim=0, unbiased=False)
    elif rule == "kurtosis":
        score = _standardised(acts).pow(4).mean(dim=0)
    else:
        median = acts.median(dim=0).values
        spread = (acts - median).abs().median(dim=0).values
        # A floor relative to the layer: a channel constant on most images but not all stays finite.
        floor = max(1e-3 * float(spread.median()), 1e-12)
        weakest = acts.topk(min(check_int("examples", examples, 1), acts.shape[0]), dim=0).values[-1]
        score = (weakest - median) / spread.clamp_min(floor)
    return _ranked(score)[:k].tolist()


def _standardised(acts: Tensor) -> Tensor:
    acts = acts.float()
    centred = acts - acts.mean(dim=0)
    return centred / centred.pow(2).mean(dim=0).sqrt().clamp_min(1e-12)


def class_purity(top_indices: Tensor, labels: Tensor) -> Tensor:
    """``(rows,)`` share of each row's examples that belong to the row's most common class.

    Args:
        top_indices: ``(rows, n)`` probe positions (:func:`top_examples`).
        labels: ``(P,)`` class labels of the probe images.
    """
    classes = labels[top_indices].long()
    counts = F.one_hot(classes, int(labels.max()) + 1).sum(dim=1)
    return counts.max(dim=1).values.float() / top_indices.shape[1]


def agreement(
    vis_features: Tensor, probe_features: Tensor, top_indices: Tensor, n: int, seed: int = 0
) -> dict[str, Tensor]:
    """Whether each channel's visualisation and its dataset examples show the same thing.

    For channel ``u``, the visualisation's ``n`` nearest probe images (cosine similarity of the layer's pooled
    features) are compared with the channel's top ``n`` examples: the share they have in common. The baseline
    pairs each visualisation with the top examples of another of the channels instead (a seeded random
    derangement), the overlap that similar-looking channels alone would give.

    Args:
        vis_features: ``(U, C)`` or ``(U, K, C)`` pooled layer features of the visualisations (``K`` images per
            channel are averaged).
        probe_features: ``(P, C)`` pooled layer features of the probe images.
        top_indices: ``(U, >= n)`` each channel's top examples, highest first.
        n: neighbours and examples compared.
        seed: seed of the baseline's derangement.

    Returns:
        ``{"overlap": (U,), "baseline": (U,)}`` shares in [0, 1]; the baseline is NaN for a single channel.
    """
    check_int("n", n, 1)
    if vis_features.ndim == 3:
        vis_features = vis_features.mean(dim=1)
    units = vis_features.shape[0]
    if top_indices.shape[0] != units or top_indices.shape[1] < n or n > probe_features.shape[0]:
        raise ValueError(
            f"agreement needs {units} rows of >= {n} top examples and >= {n} probe images; got top_indices of "
            f"shape {tuple(top_indices.shape)} and {probe_features.shape[0]} probe images."
        )
    similarity = F.normalize(vis_features.float(), dim=1) @ F.normalize(probe_features.float(), dim=1).T
    nearest = _ranked(similarity)[:, :n]
    top = top_indices[:, :n]
    overlap = _shared(nearest, top)
    if units < 2:
        return {"overlap": overlap, "baseline": torch.full((units,), float("nan"))}
    order = torch.randperm(units, generator=torch.Generator().manual_seed(seed))
    other = torch.empty_like(order)
    other[order] = order.roll(
        1
    )  # each channel gets the next one's examples in a random cycle: no fixed point
    return {"overlap": overlap, "baseline": _shared(nearest, top[other])}


def _shared(first: Tensor, second: Tensor) -> Tensor:
    """Per row, the share of ``first``'s entries that also occur in ``second`` (rows of distinct indices)."""
    return (first.unsqueeze(2) == second.unsqueeze(1)).any(dim=2).float().mean(dim=1)


__all__ = [
    "RULES",
    "ProbeSet",
    "Rule",
    "agreement",
    "choose_channels",
    "class_purity",
    "layer_activations",
    "top_examples",
    "unit_activations",
]
