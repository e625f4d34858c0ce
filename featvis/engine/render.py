"""Render images that maximise objectives: every target, several images each, optimised in one batch.

:func:`render` works on any ``nn.Module`` that maps model-space images ``(N, 3, H, W)`` to logits ``(N, C)``. It
leaves no trace on the model or on global state: submodule train/eval flags are restored, parameters'
``requires_grad`` and ``.grad`` are untouched (gradients are taken with ``torch.autograd.grad`` on the image
parameters only), BatchNorm statistics do not move (eval mode), and randomness comes from a private
``torch.Generator``. It also runs inside ``torch.no_grad()`` or ``torch.inference_mode()``, as in a Lightning
validation loop.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from featvis.colour import ColourTransform
from featvis.engine.hooks import LayerCapture, preserved_modes, resolve_layer
from featvis.engine.objectives import Activations, ClassLogit, Diversity, Objective, as_objective
from featvis.engine.param import ColourSquash, ImageParam, Parameterisation, make_image_param
from featvis.engine.transforms import Compose, Transform, default_transforms, slice_params
from featvis.images import grid as image_grid

OptimizerFactory = Callable[[list[Tensor], float], torch.optim.Optimizer]
AutocastSetting = Literal["auto"] | torch.dtype | None
#: Final learning rate of the cosine schedule, as a fraction of the peak.
LR_FLOOR = 0.1


class NonFiniteError(FloatingPointError):
    """An objective value or gradient became NaN or infinite while rendering; the message names the target."""


@dataclass(frozen=True)
class RenderConfig:
    """Settings of :func:`render` (its keyword defaults), to store in a callback or a config file.

    ``render(model, targets, **config.kwargs())`` renders with these settings. See :func:`render` for the meaning
    of each field.
    """

    images_per_target: int = 4
    image_size: int | tuple[int, int] = 32
    parameterisation: Parameterisation = "fourier"
    decorrelate: bool = True
    decay: float = 1.0
    init_std: float = 0.01
    transforms: Sequence[Transform] | None = None
    diversity_layer: str | None = None
    diversity_weight: float = 2.0
    steps: int = 128
    lr: float = 0.005
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    optimizer: Literal["adam"] | OptimizerFactory = "adam"
    seed: int = 0
    max_batch_size: int | None = None
    autocast_dtype: AutocastSetting = "auto"

    def kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of :func:`render` (shallow: transforms are not copied)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render` returns; ``T`` targets, ``K`` images per target.

    Attributes:
        rgb: ``(T, K, 3, H, W)`` images in RGB, every value in [0, 1].
        model_input: ``(T, K, 3, H, W)`` the same images in model space, ``colour.to_model(rgb)``.
        values: ``(T, K)`` each image's final objective value (without augmentation and without the render's
            diversity term).
        targets: the objectives, in order.
        seconds: wall-clock time of the render.
    """

    rgb: Tensor
    model_input: Tensor
    values: Tensor
    targets: tuple[Objective, ...]
    seconds: float

    @property
    def descriptions(self) -> list[str]:
        """One caption per target."""
        return [target.description for target in self.targets]

    def grid(self, padding: int = 1, pad_value: float = 1.0) -> Tensor:
        """All images in one ``(3, H', W')`` picture: one row per target, one column per image.

        Args:
            padding: pixels between images.
            pad_value: colour of the gaps, in [0, 1].
        """
        # One tiling routine for the engine, the callback and `featvis render`.
        return image_grid(self.rgb, scale=1, padding=padding, fill=pad_value).to(self.rgb)


_DEFAULTS = RenderConfig()


def render(
    model: nn.Module,
    targets: Objective | int | Sequence[Objective | int] | None = None,
    *,
    colour: ColourTransform | None = None,
    class_names: Sequence[str] | None = None,
    images_per_target: int = _DEFAULTS.images_per_target,
    image_size: int | tuple[int, int] = _DEFAULTS.image_size,
    parameterisation: Parameterisation = _DEFAULTS.parameterisation,
    decorrelate: bool = _DEFAULTS.decorrelate,
    decay: float = _DEFAULTS.decay,
    init_std: float = _DEFAULTS.init_std,
    transforms: Sequence[Transform] | None = _DEFAULTS.transforms,
    diversity_layer: str | None = _DEFAULTS.diversity_layer,
    diversity_weight: float = _DEFAULTS.diversity_weight,
    steps: int = _DEFAULTS.steps,
    lr: float = _DEFAULTS.lr,
    lr_schedule: Literal["cosine", "constant"] = _DEFAULTS.lr_schedule,
    optimizer: Literal["adam"] | OptimizerFactory = _DEFAULTS.optimizer,
    seed: int = _DEFAULTS.seed,
    max_batch_size: int | None = _DEFAULTS.max_batch_size,
    autocast_dtype: AutocastSetting = _DEFAULTS.autocast_dtype,
    progress: Callable[[int, int], None] | None = None,
) -> RenderResult:
    """Optimise ``images_per_target`` images for each target, all targets in one batch.

    Args:
        model: maps model-space images ``(N, 3, H, W)`` to logits ``(N, C)``; its device and dtype are used.
        targets: an objective, a class index, or a sequence of them; None renders every class logit.
        colour: the data's colour transform (RGB in [0, 1] to model space); None takes ``model.colour`` when the
            model has one (a ``ClassifierModule``), else the identity.
        class_names: captions of class targets; None takes ``model.class_names`` when present.
        images_per_target: images rendered per target (``K``).
        image_size: side length of the (square) images in pixels, or their ``(height, width)``.
        parameterisation: ``"fourier"`` (1/f-scaled spectrum) or ``"pixel"``.
        decorrelate: optimise colours in the data's decorrelated basis (True) or per RGB channel.
        decay: exponent of the Fourier ``1 / f`` scaling.
        init_std: standard deviation of the random start of the parameters.
        transforms: random per-image transforms applied at every step; None uses
            :func:`~featvis.engine.transforms.default_transforms` for ``image_size``; ``[]`` uses none.
        diversity_layer: layer whose Gram matrices the diversity term compares between images of the same
            target; None turns the term off.
        diversity_weight: strength of the diversity term.
        steps: optimisation steps.
        lr: learning rate (the peak, with the cosine schedule).
        lr_schedule: ``"cosine"`` lowers the learning rate from ``lr`` to ``lr / 10`` over the steps along a half
            cosine (the last steps refine instead of adding noise); ``"constant"`` keeps it.
        optimizer: ``"adam"``, or a factory ``(parameters, lr) -> torch.optim.Optimizer``.
        seed: seed of the private random generator; the same seed gives the same images.
        max_batch_size: largest number of images per forward pass; None puts all in one. Batches are cut
            between targets, so it must be at least ``images_per_target``. Chunking does not change the images.
        autocast_dtype: ``"auto"`` (bfloat16 autocast where the device supports it fast, for float32 models),
            a dtype (``torch.bfloat16`` or ``torch.float16``), or None for no autocast.
        progress: called as ``progress(done_steps, total_steps)`` after every step (e.g. a progress bar).

    Returns:
        A :class:`RenderResult` with RGB images in [0, 1], their model-space version and final values.

    Raises:
        ValueError: a bad setting, an unknown layer (the message lists the closest names), or a class or channel
            index out of range.
        NonFiniteError: an objective value or gradient became NaN or infinite; the message names the target.
    """
    start_time = time.perf_counter()
    _check_positive_int("images_per_target", images_per_target)
    height, width = _image_size(image_size)
    _check_positive_int("steps", steps, minimum=0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}.")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}.")
    if max_batch_size is not None:
        _check_positive_int("max_batch_size", max_batch_size)
        if max_batch_size < images_per_target:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) must be >= images_per_target ({images_per_target}): "
                "each target's images share one batch so the diversity term can compare them."
            )
    if not (optimizer == "adam" or callable(optimizer)):
        raise ValueError(
            f"optimizer must be 'adam' or a factory (parameters, lr) -> Optimizer, got {optimizer!r}."
        )
    diversity = Diversity(diversity_layer, diversity_weight) if diversity_layer is not None else None

    device, dtype = _device_and_dtype(model)
    amp_dtype = _resolve_autocast(autocast_dtype, device, dtype)
    channels_last = _uses_channels_last(model)
    if colour is None:
        colour = getattr(model, "colour", None)
        if not isinstance(colour, ColourTransform):
            colour = ColourTransform.identity()
    if class_names is None:
        names = getattr(model, "class_names", None)
        class_names = list(names) if isinstance(names, Sequence) and not isinstance(names, str) else None
    pipeline = Compose(default_transforms(max(height, width)) if transforms is None else transforms)

    # Lightning validates under inference mode and no_grad; rendering needs autograd regardless.
    with torch.inference_mode(False), torch.enable_grad(), preserved_modes(model):
        squash = ColourSquash(colour, decorrelate, device, dtype)
        explicit = targets is not None
        objectives = _collect_targets(targets, class_names)
        layers = set().union(*(o.layers for o in objectives)) if objectives else set()
        if diversity is not None:
            layers.add(diversity.layer)
        for name in sorted(layers):
            resolve_layer(model, name)  # unknown layer -> ValueError with suggestions, before any work
        with LayerCapture(model, layers) as capture:
            forward = _Forward(model, capture, channels_last)
            # A one-image probe counts the classes and checks every index against the model's real shapes.
            with torch.no_grad():
                probe = forward(torch.zeros(1, 3, height, width, device=device, dtype=dtype), None)
            if not explicit:
                objectives = [ClassLogit(i, _name(class_names, i)) for i in range(probe.logits.shape[1])]
            for objective in objectives + ([diversity] if diversity is not None else []):
                objective(probe)

            count = len(objectives)
            per_chunk = count if max_batch_size is None else max(1, max_batch_size // images_per_target)
            bounds = [(t, min(t + per_chunk, count)) for t in range(0, count, per_chunk)]
            generator = torch.Generator(device=device).manual_seed(seed)
            # One draw for the whole batch, then split: chunking does not change any image's start.
            full = make_image_param(
                parameterisation,
                count * images_per_target,
                height,
                width,
                decay=decay,
                init_std=init_std,
                generator=generator,
                dtype=dtype,
            )
            params = full.split([(stop - begin) * images_per_target for begin, stop in bounds])
            leaves = [param.parameter for param in params]
            optim = torch.optim.Adam(leaves, lr=lr) if optimizer == "adam" else optimizer(leaves, lr)

            for step in range(steps):
                for group in optim.param_groups:
                    group["lr"] = lr * _lr_factor(lr_schedule, step, steps)
                draws = pipeline.make_params(len(full), (height, width), generator)
                for (begin, stop), param in zip(bounds, params, strict=True):
                    rows = slice(begin * images_per_target, stop * images_per_target)
                    rgb = squash.to_rgb(param.image())
                    if len(pipeline):
                        rgb = pipeline.apply(rgb, slice_params(draws, rows))
                    acts = forward(squash.to_model(rgb), amp_dtype)
                    values = _evaluate(objectives[begin:stop], acts, images_per_target)
                    loss = -values.sum()
                    if diversity is not None:
                        spread = _evaluate([diversity] * (stop - begin), acts, images_per_target)
                        loss = loss - spread.sum()
                    (grad,) = torch.autograd.grad(loss, param.parameter)
                    _check_finite(values, grad, objectives[begin:stop], images_per_target, step)
                    param.parameter.grad = grad
                optim.step()
                if progress is not None:
                    progress(step + 1, steps)

            rgb, model_input, values = _final(params, squash, forward, objectives, bounds, images_per_target)
    shape = (count, images_per_target, 3, height, width)
    return RenderResult(
        rgb=rgb.reshape(shape),
        model_input=model_input.reshape(shape),
        values=values,
        targets=tuple(objectives),
        seconds=time.perf_counter() - start_time,
    )


class _Forward:
    """Runs the model and gathers its logits and captured layers as :class:`Activations`."""

    def __init__(self, model: nn.Module, capture: LayerCapture, channels_last: bool) -> None:
        self.model, self.capture, self.channels_last = model, capture, channels_last

    def __call__(self, images: Tensor, amp_dtype: torch.dtype | None) -> Activations:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = self.model(images)
        if not isinstance(logits, Tensor):
            raise TypeError(f"the model must return a logits tensor, got {type(logits).__name__}.")
        return Activations(logits, self.capture.take())


def _final(
    params: list[ImageParam],
    squash: ColourSquash,
    forward: _Forward,
    objectives: list[Objective],
    bounds: list[tuple[int, int]],
    images_per_target: int,
) -> tuple[Tensor, Tensor, Tensor]:
    rgbs, inputs, values = [], [], []
    with torch.no_grad():
        for (begin, stop), param in zip(bounds, params, strict=True):
            rgb = squash.to_rgb(param.image())
            model_input = squash.to_model(rgb)
            # Full precision, no augmentation: the value a user would get by classifying the shown image.
            chunk_values = _evaluate(objectives[begin:stop], forward(model_input, None), images_per_target)
            _check_finite(chunk_values, None, objectives[begin:stop], images_per_target, None)
            rgbs.append(rgb)
            inputs.append(model_input)
            values.append(chunk_values.float())
    return torch.cat(rgbs), torch.cat(inputs), torch.cat(values)


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    if schedule == "constant":
        return 1.0
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * step / steps))


def _evaluate(objectives: Sequence[Objective], acts: Activations, images_per_target: int) -> Tensor:
    """``(targets, images_per_target)`` values, each objective on its own target's images."""
    count = len(objectives)
    if all(type(o) is ClassLogit for o in objectives):
        # Common case (one class per target) in one gather instead of a Python loop; indices were checked.
        index = torch.tensor([o.index for o in objectives], device=acts.logits.device)
        logits = acts.logits.reshape(count, images_per_target, -1)
        return (
            logits.gather(2, index.view(count, 1, 1).expand(count, images_per_target, 1)).squeeze(2).float()
        )
    rows = []
    for position, objective in enumerate(objectives):
        group = acts.select(slice(position * images_per_target, (position + 1) * images_per_target))
        rows.append(objective(group).float())
    return torch.stack(rows)


def _check_finite(
    values: Tensor,
    grad: Tensor | None,
    objectives: Sequence[Objective],
    images_per_target: int,
    step: int | None,
) -> None:
    bad = ~torch.isfinite(values)
    if grad is not None:
        bad = bad | ~torch.isfinite(grad.reshape(len(objectives), -1)).all(dim=1, keepdim=True)
    if not bool(bad.any()):
        return
    names = [objectives[i].description for i in sorted(set(bad.nonzero()[:, 0].tolist()))]
    when = "after the last step" if step is None else f"at step {step}"
    raise NonFiniteError(
        f"the objective or its gradient became NaN or infinite {when} for target(s) {names}; "
        "try a smaller lr, or check the model and objective for operations that overflow."
    )


def _collect_targets(
    targets: Objective | int | Sequence[Objective | int] | None, class_names: Sequence[str] | None
) -> list[Objective]:
    if targets is None:
        return []
    if isinstance(targets, Objective | int):
        targets = [targets]
    objectives = [as_objective(t, list(class_names) if class_names else None) for t in targets]
    if not objectives:
        raise ValueError("targets is empty; pass None to render every class, or at least one objective.")
    return objectives


def _name(class_names: Sequence[str] | None, index: int) -> str | None:
    return class_names[index] if class_names is not None and index < len(class_names) else None


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sides) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sides):
        raise ValueError(f"image_size must be a positive integer or (height, width), got {image_size!r}.")
    return sides


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _uses_channels_last(model: nn.Module) -> bool:
    """Whether the model's conv weights are stored channels-last (then channels-last inputs avoid copies)."""
    for param in model.parameters():
        if param.ndim == 4 and param.shape[1] > 1 and param.shape[2] * param.shape[3] > 1:
            return param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
    return False


def _resolve_autocast(
    setting: AutocastSetting, device: torch.device, dtype: torch.dtype
) -> torch.dtype | None:
    if setting is None:
        return None
    if setting == "auto":
        if dtype != torch.float32:
            return None
        if device.type == "cpu":
            return torch.bfloat16 if _cpu_has_fast_bf16() else None
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return None
    if setting in (torch.bfloat16, torch.float16):
        return setting
    raise ValueError(
        f"autocast_dtype must be 'auto', torch.bfloat16, torch.float16 or None, got {setting!r}."
    )


def _cpu_has_fast_bf16() -> bool:
    # Without native bf16 instructions, CPU bf16 is emulated and slower than float32.
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False
