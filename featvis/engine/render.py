"""Render images that maximise objectives: every target, several images each, optimised in one batch.

:func:`render` works on any ``nn.Module`` that maps model-space images ``(N, C, H, W)`` to logits; C = 3, or 1 for a
grayscale model (its input space says which, see :class:`featvis.colour.InputConvention`). It
leaves no trace on the model or on global state: submodule train/eval flags are restored, parameters'
``requires_grad`` and ``.grad`` are untouched (gradients are taken with ``torch.autograd.grad`` on the image
parameters only), BatchNorm statistics do not move (eval mode), and randomness comes from a private
``torch.Generator``. It also runs inside ``torch.no_grad()`` or ``torch.inference_mode()``, as in a Lightning
validation loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from featvis.colour import CallableColour, ColourTransform, InputConvention, InputSpace, grey_to_rgb
from featvis.engine.colour_prior import ColourPrior
from featvis.engine.config import RenderConfig, resolve_autocast
from featvis.engine.hooks import LayerCapture, device_and_dtype, preserved_modes, resolve_layer
from featvis.engine.objectives import (
    Activations,
    ClassLogit,
    Diversity,
    Objective,
    as_objective,
    class_names_of,
)
from featvis.engine.param import ImageParam, make_image_param
from featvis.engine.spectrum import amplitude_spectra, data_scale, layout_images
from featvis.engine.squash import ColourSquash
from featvis.engine.transforms import Compose, default_transforms, slice_params

#: Final learning rate of the cosine schedule, as a fraction of the peak.
LR_FLOOR = 0.1


class NonFiniteError(FloatingPointError):
    """An objective value or gradient became NaN or infinite while rendering; the message names the target."""


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render` returns; ``T`` targets, ``K`` images per target, ``C`` classes.

    Attributes:
        rgb: ``(T, K, 3, H, W)`` images in RGB, every value in [0, 1] (a grayscale model's grey images have the
            same value in all three channels).
        model_input: ``(T, K, C, H, W)`` the same images in model space, ``colour.to_model(rgb)``, with the input
            space's channels (C = 1 for a grayscale model: ``colour.to_model(to_grey(rgb))``).
        values: ``(T, K)`` each image's final objective value (without augmentation and without the render's
            diversity term).
        logits: ``(T, K, C)`` float logits of the shown images (full precision, no augmentation), from the same
            forward pass as ``values``.
        targets: the objectives, in order.
        seconds: wall-clock time of the render.
        parameters: the final image parameters of all ``T * K`` images (one leaf, detached, on the CPU): pass
            them as ``render(..., start=...)`` to warm-start a later render of the same targets.
    """

    rgb: Tensor
    model_input: Tensor
    values: Tensor
    logits: Tensor
    targets: tuple[Objective, ...]
    seconds: float
    parameters: Tensor | None = None

    @property
    def descriptions(self) -> list[str]:
        """One caption per target."""
        return [target.description for target in self.targets]

    def target_probs(self) -> Tensor:
        """``(T, K)`` softmax probability of each class target's class on its own images; NaN for other targets."""
        probs = torch.full(self.values.shape, float("nan"))
        soft = self.logits.float().softmax(dim=-1).cpu()
        for row, target in enumerate(self.targets):
            if type(target) is ClassLogit:
                probs[row] = soft[row, :, target.index]
        return probs


_DEFAULTS = RenderConfig()


def render(
    model: nn.Module,
    targets: Objective | int | Sequence[Objective | int] | None = None,
    *,
    config: RenderConfig = _DEFAULTS,
    colour: InputSpace | InputConvention | None = None,
    basis: ColourTransform | None = None,
    class_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    start: Tensor | None = None,
    spectra: Tensor | None = None,
    **overrides: Any,
) -> RenderResult:
    """Optimise ``images_per_target`` images for each target, all targets in one batch.

    Args:
        model: maps model-space images ``(N, C, H, W)`` to logits; its device and dtype are used.
        targets: an objective, a class index, or a sequence of them; None renders every class logit.
        config: the render settings (see :class:`RenderConfig`).
        colour: the model's input space (RGB in [0, 1] to model space), e.g. ``InputConvention(...).space()``
            (an ``InputConvention`` itself is taken too); 1-channel spaces (``order="L"``) render grey images
            with a 1-channel parameterisation. None takes ``model.colour`` when the model has one (a
            ``ClassifierModule``), else the identity on RGB.
        basis: the colour basis the images are optimised in (its mean colour and decorrelation, see
            ``config.decorrelate``) when it differs from the model's input space ``colour``: e.g. a whitening
            fitted to the training pixels (``ColourTransform.from_pixels``) for a model trained on plain
            mean/std-normalised RGB; it has the space's channels. The model is still fed
            ``colour.to_model(rgb)``. None optimises in ``colour`` itself, or, for a space given by a function
            pair, in a neutral basis (mean grey 0.5, standard deviation 0.25 per channel, no mixing).
        class_names: captions of class targets; None takes ``model.class_names`` when present.
        progress: called as ``progress(done_steps, total_steps)`` after every step (e.g. a progress bar).
        start: warm start: the image parameters to begin from instead of random noise, e.g. an earlier render's
            :attr:`RenderResult.parameters` (same targets, images per target, size and parameterisation).
        spectra: real images ``(M, 3, h, w)``, RGB in [0, 1] (e.g. training images; resized to the render's size), for
            ``parameterisation="phase"``: each rendered image keeps the amplitude spectrum of one of them, drawn
            with the render's seed. Other parameterisations do not use them.
        **overrides: settings that replace those of ``config``, e.g. ``steps=32``.

    Returns:
        A :class:`RenderResult` with RGB images in [0, 1], their model-space version, final values and logits.

    Raises:
        ValueError: a bad setting, an unknown layer (the message lists the closest names), a class or channel
            index out of range, or a model whose first layer takes another number of channels than the input
            space gives (the message names the input convention to pass).
        NonFiniteError: an objective value or gradient became NaN or infinite; the message names the target.
    """
    start_time = time.perf_counter()
    if overrides:
        config = config.replace(**overrides)
    images_per_target, steps, lr, max_batch_size = (
        config.images_per_target,
        config.steps,
        config.lr,
        config.max_batch_size,
    )
    height, width = config.size
    diversity = None
    if config.diversity_layer is not None:
        diversity = Diversity(config.diversity_layer, config.diversity_weight, config.diversity_kind)

    device, dtype = device_and_dtype(model)
    amp_dtype = resolve_autocast(config.autocast, device, dtype)
    channels_last = _uses_channels_last(model)
    if colour is None:
        colour = getattr(model, "colour", None)
        if not isinstance(colour, ColourTransform | CallableColour | InputConvention):
            colour = ColourTransform.identity()
    if isinstance(colour, InputConvention):
        colour = colour.space()
    if class_names is None:
        class_names = class_names_of(model)
    if config.augment is True:
        pipeline = Compose(default_transforms((height, width)))
    else:
        pipeline = Compose(list(config.augment) if config.augment else [])

    # Lightning validates under inference mode and no_grad; rendering needs autograd regardless.
    with torch.inference_mode(False), torch.enable_grad(), preserved_modes(model):
        squash = ColourSquash(colour, config.decorrelate, device, dtype, basis=basis)
        channels = squash.channels
        use_prior = config.colour_weight > 0 and ColourPrior.describes_data(squash.basis)
        prior = ColourPrior(squash.basis) if use_prior else None
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
            probe = _probe(
                model, forward, torch.zeros(1, channels, height, width, device=device, dtype=dtype)
            )
            if not explicit:
                objectives = [ClassLogit(i, _name(class_names, i)) for i in range(probe.logits.shape[1])]
            for objective in objectives + ([diversity] if diversity is not None else []):
                objective(probe)

            count = len(objectives)
            per_chunk = count if max_batch_size is None else max(1, max_batch_size // images_per_target)
            bounds = [(t, min(t + per_chunk, count)) for t in range(0, count, per_chunk)]
            generator = torch.Generator(device=device).manual_seed(config.seed)
            magnitude: Tensor | None = None  # a "phase" render's amplitude spectra
            scale: Tensor | None = None  # a data-scaled Fourier render's scale
            if config.needs_spectra:
                if spectra is None:
                    raise ValueError(
                        f"{config.spectra_settings} takes real images (their spectra or layouts): pass "
                        "render(..., spectra=<(M, 3, H, W) training images, RGB in [0, 1]>), or keep the "
                        "defaults."
                    )
                if config.parameterisation == "phase":
                    mean = config.phase_spectrum == "mean"
                    magnitude = amplitude_spectra(
                        spectra, squash, count * images_per_target, (height, width), generator, mean=mean
                    )
                elif config.parameterisation == "fourier" and config.fourier_scale == "data":
                    # The data's mean spectrum as the Fourier scale (the mean draws nothing).
                    mean_spectrum = amplitude_spectra(spectra, squash, 1, (height, width), mean=True)
                    scale = data_scale(mean_spectrum, (height, width), config.decay)
            # One draw for the whole batch, then split: chunking does not change any image's start.
            full = make_image_param(
                config.parameterisation,
                count * images_per_target,
                height,
                width,
                decay=config.decay,
                magnitude=magnitude,
                scale=scale,
                init_std=config.init_std,
                generator=generator,
                dtype=dtype,
                channels=channels,
            )
            # Drawn after the noise, so the noise is that of a render without layouts; `spectra` was checked above.
            if config.init_layout > 0 and spectra is not None:
                layouts = layout_images(spectra, squash, len(full), (height, width), generator)
                with torch.no_grad():
                    full.parameter.add_(full.encode(layouts * config.init_layout))
            if start is not None:
                if tuple(start.shape) != tuple(full.parameter.shape):
                    raise ValueError(
                        f"start has shape {tuple(start.shape)} but this render's image parameters have shape "
                        f"{tuple(full.parameter.shape)}; pass the parameters of a render of the same targets, "
                        "images per target, image size and parameterisation, or start=None."
                    )
                with torch.no_grad():  # the random draw above still happens, so later draws are unchanged
                    full.parameter.copy_(start.to(full.parameter))
            params = full.split([(stop - begin) * images_per_target for begin, stop in bounds])
            leaves = [param.parameter for param in params]
            optimizer = config.optimizer
            optim = torch.optim.Adam(leaves, lr=lr) if optimizer == "adam" else optimizer(leaves, lr)

            # The diversity term acts in the first steps only when diversity_until < 1 (at least one step).
            diverse_steps = max(1, math.ceil(config.diversity_until * steps))
            for step in range(steps):
                for group in optim.param_groups:
                    group["lr"] = lr * _lr_factor(config.lr_schedule, step, steps)
                draws = pipeline.make_params(len(full), (height, width), generator)
                # The other chunks' colour sums, held fixed in each chunk's gradient; one chunk has none to hold,
                # so the default unchunked render spares the extra colour pass.
                others: Sequence[tuple[Tensor | float, Tensor | float]] = [(0.0, 0.0)] * len(params)
                if prior is not None and len(params) > 1:
                    with torch.no_grad():
                        others = prior.held_fixed([squash.to_rgb(param.image()) for param in params])
                for index, ((begin, stop), param) in enumerate(zip(bounds, params, strict=True)):
                    rows = slice(begin * images_per_target, stop * images_per_target)
                    rgb = squash.to_rgb(param.image())
                    loss = torch.zeros((), device=device)
                    if prior is not None:
                        total, outer, _ = prior.sums(rgb)
                        total, outer = total + others[index][0], outer + others[index][1]  # the pooled sums
                        pixels = len(full) * height * width
                        loss = loss + config.colour_weight * len(full) * prior.distance(total, outer, pixels)
                    if len(pipeline):
                        rgb = pipeline.apply(rgb, slice_params(draws, rows))
                    acts = forward(squash.to_model(rgb), amp_dtype)
                    values = _evaluate(objectives[begin:stop], acts, images_per_target)
                    loss = loss - values.sum()
                    if diversity is not None and step < diverse_steps:
                        spread = diversity.grouped(acts, stop - begin)
                        loss = loss - spread.sum()
                    (grad,) = torch.autograd.grad(loss, param.parameter)
                    _check_finite(values, grad, objectives[begin:stop], images_per_target, step)
                    param.parameter.grad = grad
                optim.step()
                if progress is not None:
                    progress(step + 1, steps)

            rgb, model_input, values, logits = _final(
                params, squash, forward, objectives, bounds, images_per_target
            )
    if channels == 1:
        rgb = grey_to_rgb(rgb)  # shown as RGB: the grey level in every channel
    return RenderResult(
        rgb=rgb.reshape(count, images_per_target, 3, height, width),
        model_input=model_input.reshape(count, images_per_target, *model_input.shape[1:]),
        values=values,
        logits=logits.reshape(count, images_per_target, -1),
        targets=tuple(objectives),
        seconds=time.perf_counter() - start_time,
        parameters=torch.cat([param.parameter.detach() for param in params]).cpu(),
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


def _probe(model: nn.Module, forward: _Forward, blank: Tensor) -> Activations:
    """The model's activations for one blank image; a channel mismatch becomes a ValueError that names the fix.

    The first convolution the image reaches is recorded, so a model that takes another number of channels than
    the input space gives is told apart from any other failure of the forward pass.
    """
    first: list[tuple[int, int]] = []  # (channels it received, channels it takes) of the first Conv2d run

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not first and args and isinstance(args[0], Tensor) and isinstance(module, nn.Conv2d):
            first.append((args[0].shape[1], module.in_channels))

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [conv.register_forward_pre_hook(record) for conv in convs]
    try:
        with torch.no_grad():
            return forward(blank, None)
    except RuntimeError as err:
        gives = blank.shape[1]
        if first and first[0][0] == gives and first[0][1] != gives:
            raise ValueError(_channel_mismatch(first[0][1], gives)) from err
        raise
    finally:
        for handle in handles:
            handle.remove()


def _channel_mismatch(takes: int, gives: int) -> str:
    if takes == 1:
        fix = "pass InputConvention(order='L', mean=[...], std=[...]) for a grayscale model (its channel is luma)"
    elif takes == 3:
        fix = "pass an RGB or BGR InputConvention (order='RGB' or 'BGR', 3 mean and 3 std values)"
    else:
        fix = "featvis renders 1-channel (grey) or 3-channel (colour) inputs; wrap the model to take one of those"
    plural = "" if takes == 1 else "s"
    return f"the model's first layer takes {takes} channel{plural} but the input convention gives {gives}; {fix}."


def _final(
    params: list[ImageParam],
    squash: ColourSquash,
    forward: _Forward,
    objectives: list[Objective],
    bounds: list[tuple[int, int]],
    images_per_target: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rgbs, inputs, values, logits = [], [], [], []
    with torch.no_grad():
        for (begin, stop), param in zip(bounds, params, strict=True):
            rgb = squash.to_rgb(param.image())
            model_input = squash.to_model(rgb)
            # Full precision, no augmentation: the value a user would get by classifying the shown image.
            acts = forward(model_input, None)
            chunk_values = _evaluate(objectives[begin:stop], acts, images_per_target)
            _check_finite(chunk_values, None, objectives[begin:stop], images_per_target, None)
            rgbs.append(rgb)
            inputs.append(model_input)
            values.append(chunk_values.float())
            logits.append(acts.logits.float())
    return torch.cat(rgbs), torch.cat(inputs), torch.cat(values), torch.cat(logits)


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    if schedule == "constant":
        return 1.0
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * step / steps))


def _evaluate(objectives: Sequence[Objective], acts: Activations, images_per_target: int) -> Tensor:
    """``(targets, images_per_target)`` values, each objective on its own target's images."""
    count = len(objectives)
    if all(type(o) is ClassLogit for o in objectives):
        # Common case (one class per target) in one gather instead of a Python loop; indices were checked.
        index = torch.tensor(
            [o.index for o in objectives if isinstance(o, ClassLogit)], device=acts.logits.device
        )
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


def _uses_channels_last(model: nn.Module) -> bool:
    """Whether the model's conv weights are stored channels-last (then channels-last inputs avoid copies)."""
    for param in model.parameters():
        if param.ndim == 4 and param.shape[1] > 1 and param.shape[2] * param.shape[3] > 1:
            return param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
    return False
