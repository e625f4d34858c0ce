"""Render settings: :class:`RenderConfig`, the one declaration of every setting of a render, and its checks.

:func:`~featvis.engine.render.render`, ``FeatureVisCallback(config=...)`` and ``featvis render`` all take a
``RenderConfig``, so each setting has one name, one default and one check, made once when the config is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from featvis.engine.checks import check_bool, check_choice, check_int, check_number
from featvis.engine.objectives import DIVERSITY_KINDS, DiversityKind
from featvis.engine.param import PARAMETERISATIONS, Parameterisation
from featvis.engine.spectrum import FOURIER_SCALES, FourierScale
from featvis.engine.transforms import Transform

OptimizerFactory = Callable[[list[Tensor], float], torch.optim.Optimizer]
Autocast = Literal["auto", "bf16", "fp16", "none"]
_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "none": None,
}


@dataclass(frozen=True)
class RenderConfig:
    """How to render: the one declaration of every render setting, validated once when it is made.

    :func:`render`, ``FeatureVisCallback(config=...)`` and ``featvis render`` all take it, so a setting has one
    name, one default and one check. In a LightningCLI config file it is the callback's ``config:`` block, and
    that block lists only what differs from these defaults.

    Args:
        images_per_target: images rendered per target (``K``).
        image_size: side length of the (square) images in pixels, or their ``(height, width)``; None takes it
            from the data or the model (the callback), else 32.
        parameterisation: ``"fourier"`` (1/f-scaled spectrum), ``"phase"`` (each image keeps a real amplitude
            spectrum, see ``phase_spectrum``, and only its phase is optimised, after MACO; :func:`render` then
            needs ``spectra``, real images) or ``"pixel"``.
        phase_spectrum: the amplitude spectra of ``"phase"`` images: ``"image"`` (each image keeps the spectrum
            of one real image, drawn with the seed, so a target's images start from different spectra) or
            ``"mean"`` (every image keeps the mean amplitude spectrum of the real images, as MACO does).
        fourier_scale: the per-frequency scale of ``"fourier"`` images: ``"1/f"`` (``1 / f ** decay``, the same for
            every colour channel) or ``"data"`` (the mean amplitude spectrum of real images, per channel of the
            colour basis, at the size of the ``1 / f`` scale; :func:`render` then needs ``spectra``, real images).
            It sets how fast each frequency changes; unlike ``"phase"``, the amplitudes stay free.
        decorrelate: optimise colours in the data's decorrelated basis (True) or per RGB channel. The basis is
            the ``colour`` transform of :func:`render`, or its ``basis`` when one is given (a whitening fitted
            to the training pixels, e.g. by the callback for a model trained on plain normalised RGB).
        decay: exponent of the Fourier ``1 / f`` scaling. 1.25, a little steeper than natural images' 1/f, gives the
            lowest frequencies (the mean colour among them) larger steps than 1/f does: on three CIFAR-10 models
            the pictures were more recognisable and closer to the data's colours than at 1.0, at the same
            spectral gap (benchmarks/README.md, "A steeper spectral prior").
        init_std: standard deviation of the random start of the parameters.
        init_layout: share, in [0, 1], of a real image's coarse layout (its mean colour and colour regions:
            frequencies up to 2.25 cycles per image, drawn with the seed) added to each image's random start; 0
            starts from the random start alone, around the data's mean colour. Above 0, :func:`render` needs
            ``spectra``, real images. Different photographs' layouts give each picture its own colours and
            ground, and the optimisation paints the target into them; the larger the share, the more of the
            layout stays (benchmarks/README.md, "A start from the data's layouts").
        augment: random per-image transforms at every step: True for
            :func:`~featvis.engine.transforms.default_transforms` sized for the image, False for none, or a list
            of :class:`~featvis.engine.transforms.Transform` objects.
        diversity_layer: layer (a name from ``model.named_modules()``) whose Gram matrices (or activations, see
            ``diversity_kind``) push a target's images apart; None turns the diversity term off.
        diversity_weight: strength of the diversity term.
        diversity_kind: what the term compares at ``diversity_layer``: ``"gram"`` (channel Gram matrices: the
            images differ in style) or ``"features"`` (the whole activation maps: they differ in what is where,
            too). Measured on CIFAR-10 models, ``"features"`` trades diversity for recognisability along about
            the Gram term's curve, at twice its weight (benchmarks/README.md, "feature repulsion").
        diversity_until: fraction of the steps during which the diversity term acts (from the first step); the
            steps after it maximise the targets alone, so the images, pushed apart early, are then made as
            recognisable as they can be from where they are.
        colour_weight: strength of the colour prior (:mod:`featvis.engine.colour_prior`): the squared Fréchet
            distance between the pictures' pooled pixel colours and the data's (the colour basis's mean and
            covariance), times the number of pictures, is subtracted from the objective; 0 turns it off. It also
            stays off where the basis says nothing of the data's colours (the identity, a bare ``[0, 255]``
            scaling). 5 brought the converged default model's pictures from a colour distance of 0.168 to real
            images to 0.090 (the bar is 0.10) at a cost of 0.005 in a strong reader's target probability, a
            quarter of what a layout start paid for the same colours (benchmarks/README.md, "The colour prior").
        steps: optimisation steps per render. The pictures depend mostly on ``steps * lr``: 80 at 0.008 (since the
            tenth session; 96 at 0.0067 before, 128 at 0.005 until issue 15) gave, over six render seeds, the same
            recognisability and diversity as 96 at 0.0067 in 0.82 of the time, keeping the class render under 5%
            of a CPU training epoch of the default model (benchmarks/README.md, "80 steps").
        lr: learning rate of the image parameters (the peak, with the cosine schedule).
        lr_schedule: ``"cosine"`` lowers the learning rate from ``lr`` to ``lr / 10`` over the steps along a half
            cosine (the last steps refine instead of adding noise); ``"constant"`` keeps it.
        optimizer: ``"adam"``, or a factory ``(parameters, lr) -> torch.optim.Optimizer``.
        seed: seed of the render's private random generator; the same seed gives the same images.
        max_batch_size: largest number of images per forward pass; None puts all in one. Batches are cut
            between targets, so it must be at least ``images_per_target``. Chunking does not change the images.
        autocast: ``"auto"`` (bfloat16 where the device runs it fast, for float32 models), ``"bf16"``,
            ``"fp16"`` or ``"none"``.

    Raises:
        ValueError: a setting is out of range or of the wrong kind; the message names it.
    """

    images_per_target: int = 4
    image_size: int | tuple[int, int] | None = None
    parameterisation: Parameterisation = "fourier"
    phase_spectrum: Literal["image", "mean"] = "image"
    fourier_scale: FourierScale = "1/f"
    decorrelate: bool = True
    decay: float = 1.25
    init_std: float = 0.01
    init_layout: float = 0.0
    augment: bool | Sequence[Transform] = True
    diversity_layer: str | None = None
    diversity_weight: float = 2.0
    diversity_kind: DiversityKind = "gram"
    diversity_until: float = 1.0
    colour_weight: float = 5.0
    steps: int = 80
    lr: float = 0.008
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    optimizer: Literal["adam"] | OptimizerFactory = "adam"
    seed: int = 0
    max_batch_size: int | None = None
    autocast: Autocast = "auto"

    def __post_init__(self) -> None:
        check_int("images_per_target", self.images_per_target, 1)
        if self.image_size is not None:
            object.__setattr__(self, "image_size", _image_size(self.image_size))
        check_choice("parameterisation", self.parameterisation, PARAMETERISATIONS)
        check_choice("phase_spectrum", self.phase_spectrum, ("image", "mean"))
        check_choice("fourier_scale", self.fourier_scale, FOURIER_SCALES)
        check_bool("decorrelate", self.decorrelate)
        object.__setattr__(self, "decay", check_number("decay", self.decay, 0.0))
        object.__setattr__(self, "init_std", check_number("init_std", self.init_std, 0.0))
        object.__setattr__(self, "init_layout", check_number("init_layout", self.init_layout, 0.0, 1.0))
        if not isinstance(self.augment, bool):
            if isinstance(self.augment, str) or not isinstance(self.augment, Sequence):
                raise ValueError(
                    f"augment must be True, False or a list of Transforms, got {self.augment!r}."
                )
            for transform in self.augment:
                if not isinstance(transform, Transform):
                    raise ValueError(f"augment lists {transform!r}, which is not a featvis Transform.")
            object.__setattr__(self, "augment", tuple(self.augment))
        if self.diversity_layer is not None and (
            not isinstance(self.diversity_layer, str) or not self.diversity_layer
        ):
            raise ValueError(f"diversity_layer must be a layer name or None, got {self.diversity_layer!r}.")
        object.__setattr__(
            self, "diversity_weight", check_number("diversity_weight", self.diversity_weight, 0.0)
        )
        check_choice("diversity_kind", self.diversity_kind, DIVERSITY_KINDS)
        object.__setattr__(
            self,
            "diversity_until",
            check_number("diversity_until", self.diversity_until, 0.0, 1.0, exclusive_minimum=True),
        )
        object.__setattr__(self, "colour_weight", check_number("colour_weight", self.colour_weight, 0.0))
        check_int("steps", self.steps, 0)
        object.__setattr__(self, "lr", check_number("lr", self.lr, 0.0, exclusive_minimum=True))
        check_choice("lr_schedule", self.lr_schedule, ("cosine", "constant"))
        if not (self.optimizer == "adam" or callable(self.optimizer)):
            raise ValueError(
                f"optimizer must be 'adam' or a factory (parameters, lr) -> Optimizer, got {self.optimizer!r}."
            )
        check_int("seed", self.seed)
        if self.max_batch_size is not None:
            check_int("max_batch_size", self.max_batch_size, 1)
            if self.max_batch_size < self.images_per_target:
                raise ValueError(
                    f"max_batch_size ({self.max_batch_size}) must be >= images_per_target "
                    f"({self.images_per_target}): each target's images share one batch so the diversity term "
                    "can compare them."
                )
        check_choice("autocast", self.autocast, ("auto", *_AUTOCAST_DTYPES))

    def replace(self, **overrides: Any) -> RenderConfig:
        """A copy with some settings changed (validated again).

        Raises:
            ValueError: an override names no setting (the message lists the valid names).
        """
        names = [field.name for field in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"unknown render setting(s) {unknown}; valid settings: {names}.")
        return dataclasses.replace(self, **overrides)

    def plain(self) -> dict[str, Any]:
        """The settings a checkpoint can hold as plain values: all but transform lists and optimiser factories.

        ``RenderConfig().replace(**config.plain())`` gives ``config`` back when it has neither.
        """

        def is_plain(value: Any) -> bool:
            if isinstance(value, tuple):  # an image size; not a tuple of transforms
                return all(is_plain(item) for item in value)
            return value is None or isinstance(value, bool | int | float | str)

        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {name: value for name, value in values.items() if is_plain(value)}

    @property
    def needs_spectra(self) -> bool:
        """Whether a render with these settings takes real images (``render(..., spectra=...)``)."""
        return bool(self.spectra_settings)

    @property
    def spectra_settings(self) -> str:
        """The settings that take real images, as an error message names them; empty when none does."""
        named = []
        if self.parameterisation == "phase":
            named.append("parameterisation='phase'")
        elif self.parameterisation == "fourier" and self.fourier_scale == "data":
            named.append("parameterisation='fourier' with fourier_scale='data'")
        if self.init_layout > 0:
            named.append(f"init_layout={self.init_layout:g}")
        return " and ".join(named)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the images; 32 x 32 when ``image_size`` is None."""
        return self.image_size if isinstance(self.image_size, tuple) else (32, 32)


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sides) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sides):
        raise ValueError(f"image_size must be a positive integer or (height, width), got {image_size!r}.")
    return sides


def resolve_autocast(setting: Autocast, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype a render uses for ``setting`` on ``device`` for a model in ``dtype`` (None: no autocast).

    ``"auto"`` picks bfloat16 only for float32 models on devices that run it natively (a CUDA device with bf16,
    a CPU with AVX-512 bf16 instructions); elsewhere it renders in the model's own dtype.

    Args:
        setting: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"none"``.
        device: where the model runs.
        dtype: the model's floating dtype.
    """
    if setting == "auto":
        if dtype != torch.float32:
            return None
        if device.type == "cpu":
            return torch.bfloat16 if _cpu_has_fast_bf16() else None
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return None
    return _AUTOCAST_DTYPES[check_choice("autocast", setting, ("auto", *_AUTOCAST_DTYPES))]


def _cpu_has_fast_bf16() -> bool:
    # Without native bf16 instructions, CPU bf16 is emulated and slower than float32.
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False
