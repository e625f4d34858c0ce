"""Hidden-unit channel sheets of a run: what each chosen channel sees, beside the training images it likes most.

:class:`ChannelSheets` holds the per-run state that a training callback needs for them and no Lightning code:
the settings (:class:`SheetConfig`, validated once), the fixed probe set of training images
(:class:`~featvis.probe.ProbeSet`, drawn with the run's seed), the chosen channels of each layer and, for the
``"change"`` rule, the last epoch's activations. One :meth:`ChannelSheets.render` call measures every layer on
the probe set in one batched forward pass, chooses the channels, renders all channels of all layers in one engine
batch and returns, per layer, the images, the examples, the chosen indices and a composed sheet to log::

    sheets = ChannelSheets(SheetConfig(layers="auto", k=16))
    sheets.setup(model, datamodule_or_loader_or_probe, colour, seed=0, size=32)
    for layer, info in sheets.render(model, colour, basis, RenderConfig(image_size=32)).items():
        log_image(f"featvis/channels/{layer}", info["sheet"]); log_scalar(..., sheets.purity()[layer])

Channel choice: listed ``channels`` are used as they are; otherwise the ``k`` channels that
:func:`~featvis.probe.choose_channels` ranks highest. With the ``"selectivity"`` (default), ``"kurtosis"`` and
``"variance"`` rules they are chosen once, at the first render that keeps its choice (``render(..., keep=True)``),
and then kept for the run (and saved in checkpoints), so a channel can be followed across epochs; with
``"change"`` they are chosen anew at every render, as the channels that changed most since the previous one.
Choose after some training (``keep=False`` before it): on the default model trained for two epochs, the top
examples of the 16 channels that selectivity picks at the end are 98-99% one class, 95-98% for those it picks
after the first epoch, but only 68-72% for those it picks on the untrained network, below random channels'
75-78% (three probe sets).

Warm start (on by default when the channels are kept: every rule but ``"change"``): each render begins from
the last one's image parameters (kept, and saved in checkpoints, so a resumed run warm-starts as the uninterrupted
one would) and takes ``warm_steps`` steps (default half), unless a channel's last image kept less than 0.3 of its
activation on the current model (``stale``): then it renders cold. See :mod:`featvis.warm` for the measurements.

History (``render(..., epoch=e)``): per layer, a :class:`~featvis.timeline.Timeline` of each channel's first image
(:meth:`ChannelSheets.timelines`) and a :class:`~featvis.timeline.PurityHistory`, the purity of each channel's top
examples by epoch (:meth:`ChannelSheets.purity_history`): when the channels specialise. Both go in checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from featvis.colour import ColourTransform, InputSpace
from featvis.engine import RenderConfig, render
from featvis.engine.checks import check_bool, check_choice, check_int, check_number
from featvis.probe import (
    RULES,
    ProbeSet,
    Rule,
    choose_channels,
    class_purity,
    layer_activations,
    top_examples,
)
from featvis.sheets import channel_sheet
from featvis.targets import AUTO_LAYER, Target, layer_width, resolve_layer_name, resolve_targets
from featvis.timeline import LayerHistory, Timeline, UserWarnOnce
from featvis.warm import WarmStart, unit_measure

_PREFIX = "sheets_"  # state keys, so they can sit beside a callback's own in one state dict


@dataclass(frozen=True)
class SheetConfig:
    """Which hidden channels to show and how: the one declaration of the channel sheets' settings.

    Args:
        layers: names from ``model.named_modules()``, one sheet each; ``"auto"`` (alone or in the list) stands
            for the last spatial block (:func:`featvis.targets.auto_layer`).
        channels: channel indices shown for every layer; None chooses ``k`` automatically with ``rule``.
        k: channels chosen per layer when ``channels`` is None.
        examples: top dataset examples shown beside each channel (``n``).
        probe_size: training images in the fixed probe set the examples come from.
        rule: ``"selectivity"`` (the channels whose top examples stand out most, chosen once), ``"kurtosis"``
            or ``"variance"`` (chosen once), or ``"change"`` (largest change since the last render, chosen at
            every render); see :func:`featvis.probe.choose_channels`.
        images_per_channel: visualisations rendered per channel (``K``).
        neuron: show each channel's centre neuron (examples ranked by it) instead of its mean activation.
        warm_start: start each render from the last render's image parameters when it rendered the same
            channels at the same image size, images per channel and parameterisation (else cold, from noise).
            None: on unless ``rule="change"`` chooses new channels every epoch.
        warm_steps: steps of a warm-started render; None takes half the render config's steps (at least 1).
        stale: render cold instead when a channel's last image keeps less than this share of its activation on
            the current model (the channel changed what it detects); see :mod:`featvis.warm`.

    Raises:
        ValueError: a setting out of range or of the wrong kind; the message names it.
    """

    layers: Sequence[str] | Literal["auto"] = AUTO_LAYER
    channels: Sequence[int] | None = None
    k: int = 16
    examples: int = 6
    probe_size: int = 512
    rule: Rule = "selectivity"
    images_per_channel: int = 1
    neuron: bool = False
    warm_start: bool | None = None
    warm_steps: int | None = None
    stale: float = 0.3

    def __post_init__(self) -> None:
        layers = [self.layers] if isinstance(self.layers, str) else self.layers
        if (
            not isinstance(layers, Sequence)
            or not layers
            or not all(isinstance(n, str) and n for n in layers)
        ):
            raise ValueError(
                f"layers must be 'auto' or a non-empty list of layer names, got {self.layers!r}."
            )
        object.__setattr__(self, "layers", tuple(dict.fromkeys(layers)))
        if self.channels is not None:
            if isinstance(self.channels, int | str) or not self.channels:
                raise ValueError(
                    f"channels must be a non-empty list of channel indices or None, got {self.channels!r}."
                )
            object.__setattr__(self, "channels", tuple(check_int("channel", c, 0) for c in self.channels))
        check_int("k", self.k, 1)
        check_int("examples", self.examples, 1)
        check_int("probe_size", self.probe_size, 1)
        if self.probe_size < self.examples:
            raise ValueError(
                f"probe_size={self.probe_size} is smaller than examples={self.examples}; raise it."
            )
        check_choice("rule", self.rule, RULES)
        check_int("images_per_channel", self.images_per_channel, 1)
        check_bool("neuron", self.neuron)
        if self.warm_start is None:  # on wherever the channels stay the same from epoch to epoch
            object.__setattr__(self, "warm_start", self.rule != "change" or self.channels is not None)
        check_bool("warm_start", self.warm_start)
        check_number("stale", self.stale, 0, 1)
        if self.warm_steps is not None:
            check_int("warm_steps", self.warm_steps, 1)
        if self.warm_start and self.rule == "change" and self.channels is None:
            raise ValueError(
                "warm_start=True needs the same channels every epoch, which rule='change' does not keep; use "
                "another rule, list the channels, or set warm_start=False."
            )


class ChannelSheets:
    """Per-run state and work of the channel sheets (see the module docstring).

    Args:
        config: the settings.
        warn: ``warn(key, message)`` for the histories' restarts; None: a ``UserWarning`` per key, once.
    """

    def __init__(
        self, config: SheetConfig | None = None, warn: Callable[[str, str], None] | None = None
    ) -> None:
        self.config = config if config is not None else SheetConfig()
        self.warn = warn if warn is not None else UserWarnOnce()
        self.layers: list[str] | None = None  # resolved by check()
        self.probe: ProbeSet | None = None
        self.channels: dict[str, list[int]] = {}  # chosen (or listed) channels per layer
        self._previous: dict[str, Tensor] = {}  # last render's probe activations, for the "change" rule
        self._saved_indices: Tensor | None = None  # probe indices from a checkpoint, used by setup()
        self._purity: dict[str, float] = {}
        # Warm start: the last render's (tags, [height, width, images per channel, parameterisation], parameters).
        self._warm = WarmStart(self.config.stale)
        self._history = LayerHistory(self.warn)  # the renders recorded with an epoch
        # What setup() reads the probe set from: (source, colour, seed); read again after a late restore.
        self._source: tuple[Any, InputSpace | None, int] | None = None

    def check(self, model: nn.Module, size: int | tuple[int, int]) -> list[str]:
        """Resolve and validate the layers against ``model`` (cheap: one probe image per layer).

        Args:
            model: the model whose layers are shown.
            size: the image size of the renders.

        Returns:
            The layer names, ``"auto"`` replaced by the layer it stands for.

        Raises:
            ValueError: an unknown layer (closest names listed), a layer with no channel axis, ``neuron`` on a
                layer without ``(N, C, H, W)`` outputs, or more channels than a layer has.
        """
        config, layers = self.config, []
        for name in config.layers:
            layer = resolve_layer_name(model, name, size)
            width = layer_width(model, layer, size)
            if config.neuron:  # centre neurons need (N, C, H, W) outputs: the one-line error names the fix
                layer_activations(model, [layer], torch.zeros(1, 3, *_pair(size)), neuron=True)
            if config.channels is not None:
                resolve_targets(model, size, layer=layer, channels=config.channels, neuron=config.neuron)
            elif config.k > width:
                raise ValueError(
                    f"k={config.k} channels asked of layer {layer!r}, which has {width}; set k <= {width} or "
                    "list the channels."
                )
            if layer not in layers:
                layers.append(layer)
        self.layers = layers
        return layers

    def setup(
        self,
        model: nn.Module,
        source: ProbeSet | DataLoader | Any,
        colour: InputSpace | None,
        seed: int,
        size: int | tuple[int, int] = 32,
    ) -> None:
        """Validate the settings against ``model`` and build the probe set (from saved indices on resume).

        Args:
            model: the network (maps model-space images to logits).
            source: a ready :class:`ProbeSet`; a datamodule with ``split("train")`` (uint8 RGB images and
                labels, as ``CIFARDataModule`` has); or the training ``DataLoader`` (model-space batches).
            colour: the model's input space (RGB in [0, 1] to model space); None means RGB.
            seed: the run's seed: the probe images are drawn with it.
            size: the render's image size, to resolve ``"auto"``.

        Raises:
            ValueError: see :meth:`check`; or data the probe set cannot be read from.
        """
        self.check(model, size)
        self._source = (source, colour, seed)
        self._read_probe(model)

    def _read_probe(self, model: nn.Module) -> ProbeSet:
        if self._source is None:
            raise RuntimeError("ChannelSheets.render needs setup(model, source, colour, seed) first.")
        source, colour, seed = self._source
        count, indices = self.config.probe_size, self._saved_indices
        if isinstance(source, ProbeSet):
            probe = source
        elif callable(getattr(source, "split", None)):
            images, labels = source.split("train")
            probe = ProbeSet.from_tensors(images, labels, seed, count, colour, indices=indices)
        elif isinstance(source, DataLoader):
            probe = ProbeSet.from_loader(source, count, seed, colour, indices=indices, model=model)
        else:
            raise ValueError(
                f"cannot read probe images from a {type(source).__name__}; pass a ProbeSet, a datamodule with "
                "split('train'), or the training DataLoader."
            )
        if len(probe) < self.config.examples:
            raise ValueError(
                f"the probe set has {len(probe)} images, fewer than examples={self.config.examples}; "
                "lower examples."
            )
        self.probe = probe
        return probe

    def render(
        self,
        model: nn.Module,
        colour: InputSpace | None,
        basis: ColourTransform | None = None,
        config: RenderConfig | None = None,
        spectra: Tensor | None = None,
        *,
        scale: int | None = None,
        keep: bool = True,
        epoch: int | None = None,
        steps: int | None = None,
        layers: Sequence[str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Render every layer's chosen channels in one batch and pair them with their top probe examples.

        Args:
            model: the network as it is now (left exactly as it was found).
            colour: its input space, passed to :func:`featvis.engine.render`.
            basis: the colour basis to optimise in, when it differs from ``colour``.
            config: the render settings (its ``image_size`` is the render's); ``images_per_target`` is replaced
                by ``images_per_channel``.
            spectra: training images ``(M, 3, h, w)`` in [0, 1] whose amplitude spectra a phase-only render keeps
                (``config.parameterisation == "phase"``); see :func:`featvis.engine.render`.
            scale: upsampling factor of the composed sheet; None picks ``max(1, 128 // size)``.
            keep: keep an automatic choice made now for the later renders (all rules but ``"change"``); False
                chooses for this render only, e.g. for the untrained model before training.
            epoch: record this render in the histories (:meth:`timelines`, :meth:`purity_history`) at ``epoch``;
                None records nothing.
            steps: optimisation steps of this render, e.g. to fit a time budget; None takes ``warm_steps`` for a
                warm-started render (see :class:`SheetConfig`) and the config's steps for a cold one.
            layers: render only these of the configured layers (e.g. to fit a time budget); None: all. A render
                of other layers than the last one starts cold.

        Returns:
            Per layer (in configured order): ``rgb`` ``(U, K, 3, H, W)`` visualisations in [0, 1] (CPU);
            ``values`` ``(U, K)`` each visualisation's objective value; ``channels`` (list of ``U`` ints);
            ``tags`` (``<layer>.ch<c>`` or ``<layer>.neuron<c>``); ``examples`` ``(U, n, 3, h, w)`` RGB of the
            top examples, highest first; ``example_indices`` ``(U, n)`` their positions in the probe set and
            ``dataset_indices`` ``(U, n)`` in the training data; ``example_values`` ``(U, n)`` their activations
            (same measure as ``values``); ``purity`` ``(U,)`` class purity of the examples (NaN without labels);
            ``sheet`` ``(3, H', W')`` the composed picture (:func:`featvis.sheets.channel_sheet`); ``seconds`` the
            wall time of this whole call and ``render_seconds`` that of the engine render in it (both shared by
            all layers: one batch); ``warm`` whether the render was warm-started and ``steps`` its steps.

        Raises:
            RuntimeError: :meth:`setup` has not run.
            ValueError: ``steps`` or ``epoch`` is not an integer (>= 1, >= 0).
        """
        start, cfg = time.perf_counter(), self.config
        if epoch is not None:  # checked before any work
            check_int("epoch", epoch, 0)
        steps = None if steps is None else check_int("steps", steps, 1)
        probe = self.probe if self.probe is not None else self._read_probe(model)
        assert self.layers is not None  # set by setup(), which _read_probe() needs
        layers = [name for name in self.layers if layers is None or name in layers]
        config = (config or RenderConfig()).replace(images_per_target=cfg.images_per_channel)
        acts = layer_activations(model, layers, probe.images, neuron=cfg.neuron)
        targets: dict[str, list[Target]] = {}
        chosen = {layer: self._choose(layer, acts[layer]) for layer in layers}
        kept = keep or cfg.channels is not None or cfg.rule == "change"
        if kept:
            self.channels.update(chosen)
        for layer in layers:
            targets[layer] = resolve_targets(
                model, config.size, layer=layer, channels=chosen[layer], neuron=cfg.neuron
            )
        objectives = [target.objective for layer in layers for target in targets[layer]]
        tags = [target.tag for layer in layers for target in targets[layer]]
        signature = [*config.size, config.images_per_target, config.parameterisation]
        measure = unit_measure(model, colour, layers, chosen, config.images_per_target, cfg.neuron)
        warm = self._warm.start(tags, signature, measure) if cfg.warm_start else None
        if steps is None:
            steps = self.next_steps(config, warm is not None)
        config = config.replace(steps=steps)
        result = render(
            model, objectives, config=config, colour=colour, basis=basis, start=warm, spectra=spectra
        )
        if cfg.warm_start and result.parameters is not None:
            self._warm.record(tags, signature, result.parameters, result.rgb.flatten(0, 1), measure)
        scale = scale if scale is not None else max(1, 128 // max(config.size))
        out, row = {}, 0
        for layer in layers:
            channels, tags = chosen[layer], [t.tag for t in targets[layer]]  # this layer's only
            rows = slice(row, row + len(channels))
            row += len(channels)
            top = top_examples(acts[layer], channels, cfg.examples)
            rgb = result.rgb[rows].float().cpu()
            purity = (
                class_purity(top, probe.labels)
                if probe.labels is not None
                else torch.full((len(channels),), float("nan"))
            )
            self._purity[layer] = float(purity.mean())
            out[layer] = {
                "rgb": rgb,
                "values": result.values[rows].float().cpu(),
                "channels": list(channels),
                "tags": tags,
                "examples": probe.rgb[top],
                "example_indices": top,
                "dataset_indices": probe.indices[top],
                "example_values": acts[layer].T[channels].gather(1, top),
                "purity": purity,
                "sheet": channel_sheet(rgb, probe.rgb[top], tags, scale=scale, corner=layer),
                "warm": warm is not None,
                "steps": config.steps,
            }
            if epoch is not None and kept:  # a throwaway choice (keep=False) is not the run's history
                self._history.add(layer, epoch, rgb, purity, tags)
        if cfg.rule == "change":
            self._previous = acts
        seconds = time.perf_counter() - start
        for info in out.values():
            info["seconds"], info["render_seconds"] = seconds, result.seconds
        return out

    def _choose(self, layer: str, acts: Tensor) -> list[int]:
        cfg = self.config
        if cfg.channels is not None:
            return list(cfg.channels)
        if cfg.rule != "change" and layer in self.channels:
            return self.channels[layer]  # chosen once per run, so the timeline follows the same channels
        return choose_channels(acts, cfg.k, cfg.rule, self._previous.get(layer), examples=cfg.examples)

    def next_steps(self, config: RenderConfig, warm: bool | None = None) -> int:
        """The steps :meth:`render` takes by default: ``warm_steps`` when it warm-starts (None: if it can)."""
        warm = self.config.warm_start and self._warm.parameters is not None if warm is None else warm
        return (self.config.warm_steps or max(1, config.steps // 2)) if warm else config.steps

    @staticmethod
    def summary(
        out: Mapping[str, Mapping[str, Any]],
    ) -> tuple[dict[str, Tensor], dict[str, float], tuple[float, float, dict[str, int], int] | None]:
        """What a training callback logs of one :meth:`render`: pictures, scalars and the timing.

        Returns:
            ``{"channels/<layer>": sheet}``; scalars ``channels/<layer>/purity``, ``channels/render_seconds``,
            ``channels/warm`` (1: warm-started); the timing for :meth:`featvis.budget.TimeBudget.record_epoch`.
        """
        if not out:
            return {}, {}, None
        first = next(iter(out.values()))  # timings are shared by all layers: one batch
        scalars = {f"channels/{layer}/purity": float(info["purity"].nanmean()) for layer, info in out.items()}
        scalars |= {"channels/render_seconds": float(first["seconds"]), "channels/warm": float(first["warm"])}
        images = {layer: int(info["rgb"].shape[0] * info["rgb"].shape[1]) for layer, info in out.items()}
        pictures = {f"channels/{layer}": info["sheet"] for layer, info in out.items()}
        timing = (float(first["seconds"]), float(first["render_seconds"]), images, int(first["steps"]))
        return pictures, scalars, timing

    def timelines(self) -> dict[str, Timeline]:
        """Per layer, the timeline of the renders recorded with ``epoch``: each channel's first image per epoch."""
        return dict(self._history.timelines)

    def purity_history(self) -> dict[str, tuple[list[int], Tensor, list[str]]]:
        """Per layer, the specialisation curve of the renders recorded with ``epoch``.

        Returns:
            ``{layer: (epochs, purity, tags)}``: the epochs ascending, ``(E, U)`` purity of each channel's top
            examples at those epochs (NaN without labels) and the ``U`` channel tags.
        """
        return {layer: history.columns() for layer, history in self._history.purity.items()}

    def purity(self) -> dict[str, float]:
        """Per layer, the mean class purity of the chosen channels' top examples at the last render.

        NaN for data without labels; empty before the first render.
        """
        return dict(self._purity)

    def state_dict(self) -> dict[str, Any]:
        """The probe indices, channels, last activations (``"change"``), warm-start parameters and histories.

        Keys start with ``sheets_`` so the dict can be merged into a callback's own state.
        """
        state: dict[str, Any] = {f"{_PREFIX}channels": {k: list(v) for k, v in self.channels.items()}}
        if self.probe is not None:
            state[f"{_PREFIX}probe_indices"] = self.probe.indices.clone()
        if self._previous:
            state[f"{_PREFIX}previous"] = {k: v.clone() for k, v in self._previous.items()}
        if self._warm.parameters is not None:
            state[f"{_PREFIX}warm"] = self._warm.state_dict()
        history = self._history.state_dict()
        return state | {f"{_PREFIX}{key}": value for key, value in history.items() if value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved: the probe set is read again from the saved indices.

        Missing keys (a checkpoint from before channel sheets) leave the state as it is.
        """
        if f"{_PREFIX}probe_indices" in state:
            self._saved_indices = torch.as_tensor(state[f"{_PREFIX}probe_indices"], dtype=torch.int64)
            if self.probe is not None and not torch.equal(self.probe.indices, self._saved_indices):
                # Read before the restore from other indices: the next render reads them again.
                self.probe = None
        saved = state.get(f"{_PREFIX}channels", {})
        self.channels = {str(k): [int(c) for c in v] for k, v in saved.items()}
        self._previous = {str(k): torch.as_tensor(v) for k, v in state.get(f"{_PREFIX}previous", {}).items()}
        self._warm.load_state_dict(state.get(f"{_PREFIX}warm", {}))
        self._history.load_state_dict({key: state.get(f"{_PREFIX}{key}", {}) for key in LayerHistory.KEYS})


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


__all__ = ["ChannelSheets", "SheetConfig"]
