"""Input conventions and colour spaces: how a classifier's input relates to RGB in [0, 1].

Pure PyTorch (plus SciPy for the Cholesky factor), shared by the data module, engine, quality metrics and checkpoints.

* :class:`InputConvention` is the one documented way to say what a model takes (mean/std, [0, 255], BGR, grayscale,
  or an invertible function pair); its :meth:`~InputConvention.space` is the model's input space.
* :class:`ColourTransform` is the affine input space, per pixel ``z = (colour - mean) @ matrix`` on C = 3 (RGB) or
  C = 1 (grey) channels: Cholesky whitening (``matrix = cholesky(inv(cov)).T``), mean/std normalisation
  (``matrix = diag(1 / std)``), a [0, 255] range and a BGR channel order all take this form.
* :class:`CallableColour` is the input space of a function pair, with the same duck interface.

An input space (:data:`InputSpace`) maps images in its own colour channels (RGB ``(N, 3, H, W)``, or grey
``(N, 1, H, W)`` from :func:`to_grey` for a 1-channel space) to model inputs, and back.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

#: ITU-R BT.601 luma weights of R, G and B (as PIL's ``convert("L")`` and OpenCV's grey conversion use them).
LUMA = (0.299, 0.587, 0.114)
Order = Literal["RGB", "BGR", "L"]
_ORDERS = ("RGB", "BGR", "L")
_BGR = (2, 1, 0)  # the RGB channel each model channel of a BGR model reads


def _check_images(images: Tensor, channels: int, name: str = "images") -> None:
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"expected {name} of shape (N, {channels}, H, W), got {tuple(images.shape)}.")


def to_grey(rgb: Tensor) -> Tensor:
    """The luma ``0.299 R + 0.587 G + 0.114 B`` of ``(N, 3, H, W)`` RGB images, as ``(N, 1, H, W)`` grey images."""
    _check_images(rgb, 3, "RGB images")
    weights = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def grey_to_rgb(grey: Tensor) -> Tensor:
    """``(N, 1, H, W)`` grey images shown as ``(N, 3, H, W)`` RGB: the grey level in every channel (for display)."""
    _check_images(grey, 1, "grey images")
    return grey.repeat(1, 3, 1, 1)


class ColourTransform(nn.Module):
    """Per-pixel affine map between colours in [0, 1] (RGB, or grey for C = 1) and model space.

    ``to_model(colour) = (colour - mean) @ matrix`` applied to the channel axis of ``(N, C, H, W)`` tensors, and
    ``to_rgb`` its exact inverse. Both are differentiable. The mean and matrices are buffers, so they follow the
    module's device and are saved in checkpoints.

    Args:
        mean: channel mean in [0, 1] units: 3 values (R, G, B), or 1 for a grey (1-channel) space.
        matrix: C x C matrix applied to mean-centred colours as row vectors.
    """

    # Registered buffers, declared so type checkers see Tensors rather than ``Tensor | Module``.
    mean: Tensor
    matrix: Tensor
    inverse: Tensor

    def __init__(self, mean: Sequence[float] | Tensor, matrix: Sequence[Sequence[float]] | Tensor) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        matrix_t = torch.as_tensor(matrix, dtype=torch.float64)
        channels = mean_t.shape[0]
        if channels not in (1, 3):
            raise ValueError(
                f"mean must hold 3 (R, G, B) or 1 (grey) values, got shape {tuple(mean_t.shape)}."
            )
        if matrix_t.shape != (channels, channels):
            raise ValueError(f"matrix must be {channels}x{channels}, got shape {tuple(matrix_t.shape)}.")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(matrix_t).all()):
            raise ValueError("mean and matrix must be finite.")
        if abs(float(torch.linalg.det(matrix_t))) < 1e-12:
            raise ValueError("matrix is singular; a colour transform must be invertible.")
        self.register_buffer("mean", mean_t.float())
        self.register_buffer("matrix", matrix_t.float())
        self.register_buffer("inverse", torch.linalg.inv(matrix_t).float())

    @property
    def channels(self) -> int:
        """Number of colour channels: 3 (RGB) or 1 (grey)."""
        return int(self.mean.shape[0])

    @classmethod
    def from_pixels(cls, pixels: Tensor | np.ndarray) -> ColourTransform:
        """Cholesky whitening fitted to pixels, so transformed pixels have identity covariance.

        Args:
            pixels: images as ``(N, C, H, W)`` uint8 (0..255) or float in [0, 1], or ``(M, C)`` float colours;
                C = 3 (RGB) or 1 (grey, giving a 1-channel transform).
        """
        arr = pixels.detach().cpu().numpy() if isinstance(pixels, Tensor) else np.asarray(pixels)
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        if arr.ndim == 4 and arr.shape[1] in (1, 3):
            colours = arr.transpose(1, 0, 2, 3).reshape(arr.shape[1], -1)
        elif arr.ndim == 2 and arr.shape[1] in (1, 3):
            colours = arr.T
        else:
            raise ValueError(
                f"pixels must be (N, 3, H, W) or (N, 1, H, W) images, or (M, 3) or (M, 1) colours, got {arr.shape}."
            )
        # Accumulate in float64 in chunks: 50k CIFAR images are 51M values per channel.
        channels, count = colours.shape
        total = np.zeros(channels)
        outer = np.zeros((channels, channels))
        for start in range(0, count, 1 << 22):
            chunk = colours[:, start : start + (1 << 22)].astype(np.float64) / scale
            total += chunk.sum(axis=1)
            outer += chunk @ chunk.T
        mean = total / count
        cov = outer / count - np.outer(mean, mean)
        try:
            upper = scipy.linalg.cholesky(np.linalg.inv(cov), lower=False)
        except np.linalg.LinAlgError as err:
            raise ValueError(
                f"the pixels' colour covariance is singular or not positive definite ({err}), e.g. greyscale "
                "or constant images; such colours cannot be whitened (use mean/std normalisation instead, or "
                "fit (N, 1, H, W) grey images for a grayscale model)."
            ) from err
        return cls(torch.from_numpy(mean), torch.from_numpy(upper.T.copy()))

    @classmethod
    def from_normalisation(cls, mean: Sequence[float], std: Sequence[float]) -> ColourTransform:
        """The usual ``(colour - mean) / std`` normalisation, written as a colour transform.

        Args:
            mean: per-channel mean in [0, 1] units: 3 values (R, G, B), or 1 for a grey space.
            std: per-channel standard deviation, as many as ``mean``, all positive.
        """
        if len(mean) not in (1, 3):
            raise ValueError(
                f"the normalisation mean must hold 3 values (R, G, B) or 1 (grey), got {list(mean)!r}."
            )
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if std_t.shape != (len(mean),) or bool((std_t <= 0).any()):
            raise ValueError(
                f"std must be {len(mean)} positive value(s), one per mean value, got {std_t.tolist()}."
            )
        return cls(mean, torch.diag(1.0 / std_t))

    @classmethod
    def find(cls, *sources: object) -> ColourTransform | None:
        """The ``colour`` attribute of the first of ``sources`` (e.g. datamodule, model) that has a ColourTransform."""
        for source in sources:
            colour = getattr(source, "colour", None)
            if isinstance(colour, ColourTransform):
                return colour
        return None

    @classmethod
    def identity(cls, channels: int = 3) -> ColourTransform:
        """Model space equals the colours in [0, 1]: RGB (``channels=3``) or grey (``channels=1``)."""
        return cls(torch.zeros(channels), torch.eye(channels))

    def _map_channels(self, images: Tensor, matrix: Tensor) -> Tensor:
        _check_images(images, self.channels)
        return torch.einsum("nchw,cd->ndhw", images, matrix.to(images.dtype))

    def to_model(self, rgb: Tensor) -> Tensor:
        """Map colours in [0, 1], shape ``(N, C, H, W)`` (RGB, or grey for C = 1), to model space."""
        # Check before subtracting the mean: broadcasting would turn a (3, H, W) image into (1, 3, H, W).
        _check_images(rgb, self.channels)
        mean = self.mean.to(rgb.dtype).view(1, -1, 1, 1)
        return self._map_channels(rgb - mean, self.matrix)

    def to_rgb(self, model_space: Tensor) -> Tensor:
        """Map model-space images back to colours (RGB, or grey for C = 1; not clipped)."""
        mean = self.mean.to(model_space.dtype).view(1, -1, 1, 1)
        return self._map_channels(model_space, self.inverse) + mean

    def copy(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ColourTransform:
        """An independent copy with the same buffers, bit for bit, on ``device`` in ``dtype``.

        The copy's tensors are ordinary ones even if this transform was made under ``torch.inference_mode``
        (as in a Lightning validation loop), so they can enter autograd. The inverse is copied, not recomputed,
        so ``to_rgb`` stays exactly the same.

        Args:
            device: device of the copy; None keeps the current one.
            dtype: floating dtype of the copy; None keeps float32.
        """
        clone = ColourTransform.__new__(ColourTransform)
        nn.Module.__init__(clone)
        for name in ("mean", "matrix", "inverse"):
            buffer = getattr(self, name).detach().clone().to(device=device, dtype=dtype)
            clone.register_buffer(name, buffer)
        return clone

    def forward(self, rgb: Tensor) -> Tensor:
        return self.to_model(rgb)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}"


@dataclass(frozen=True, eq=False)
class CallableColour:
    """The input space of an invertible pair of functions: anything that is not an affine per-pixel map.

    It has :class:`ColourTransform`'s duck interface. The functions take and return ``(N, C, H, W)`` tensors on
    any device and in any floating dtype; when it is made, ``to_rgb(to_model(x))`` must give back a test image.

    Args:
        model_fn: colours in [0, 1] (RGB, or grey for ``channels=1``) to model inputs.
        rgb_fn: its inverse.
        channels: 3 (RGB) or 1 (grey).
    """

    model_fn: Callable[[Tensor], Tensor]
    rgb_fn: Callable[[Tensor], Tensor]
    channels: int = 3

    def __post_init__(self) -> None:
        if self.channels not in (1, 3) or not (callable(self.model_fn) and callable(self.rgb_fn)):
            raise ValueError(
                f"need functions to_model and to_rgb and channels 3 or 1, got {self.channels!r}."
            )
        # A fixed ramp of colours in [0, 1] (no random draw): enough to catch a pair that is not inverse.
        probe = torch.linspace(0.0, 1.0, self.channels * 64).view(1, self.channels, 8, 8)
        try:
            back = self.rgb_fn(self.model_fn(probe))
        except (RuntimeError, TypeError, ValueError, IndexError) as err:
            message = f"to_model/to_rgb failed on a (1, {self.channels}, 8, 8) CPU float32 test image ({err})"
            raise ValueError(f"{message}; they must take (N, C, H, W) tensors on any device.") from err
        same_shape = isinstance(back, Tensor) and back.shape == probe.shape
        error = float((back.float() - probe).abs().max()) if same_shape else math.inf
        if not error <= 1e-3:
            message = f"to_rgb(to_model(x)) differs from x by up to {error:.3g} on a test image"
            raise ValueError(f"{message}; to_model and to_rgb must be inverse maps.")

    def to_model(self, rgb: Tensor) -> Tensor:
        _check_images(rgb, self.channels)
        return self.model_fn(rgb)

    def to_rgb(self, model_space: Tensor) -> Tensor:
        return self.rgb_fn(model_space)

    def copy(self, device: Any = None, dtype: torch.dtype | None = None) -> CallableColour:
        """Itself: the functions follow their inputs' device and dtype."""
        return self


#: The model input space: what :func:`featvis.engine.render`, :class:`featvis.quality.RGBInput` and
#: :class:`featvis.basis.LearnedBasis` take (from :meth:`InputConvention.space`, or a data module's whitening).
InputSpace: TypeAlias = ColourTransform | CallableColour


@dataclass(frozen=True)
class InputConvention:
    """How a model's input relates to RGB in [0, 1]; validated once, when it is made.

    The affine fields say ``x = (rgb_in_model_order * max_value - mean) / std`` per channel (mmcv style):
    ``InputConvention(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])`` for torchvision models,
    ``InputConvention(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], max_value=255)`` for [0, 255]
    ones, ``order="BGR"`` for Caffe/OpenCV-style models, and ``order="L"`` with one mean and one std value for a
    grayscale model, whose single channel is the luma ``0.299 R + 0.587 G + 0.114 B`` (:func:`to_grey`).
    Anything else is an invertible pair ``to_model``/``to_rgb``. Lists are stored as tuples (YAML friendly).

    Args:
        mean: per model channel, in units of ``max_value`` and in the model's channel order; None: 0.
        std: per model channel, likewise, all positive; None: 1.
        max_value: the value of full intensity in the model's units: 1 for [0, 1] models, 255 for [0, 255].
        order: ``"RGB"``, ``"BGR"`` or ``"L"`` (a 1-channel grayscale model).
        to_model: colours in [0, 1] ``(N, C, H, W)`` (C = 1 for order ``"L"``, else 3; RGB order) to model
            inputs; with ``to_rgb``, not with ``mean``, ``std``, ``max_value`` or order ``"BGR"``.
        to_rgb: the inverse of ``to_model``.

    Raises:
        ValueError: a field is out of range or does not fit the others; the message names it and the fix.
    """

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    max_value: float = 1.0
    order: Order = "RGB"
    to_model: Callable[[Tensor], Tensor] | None = None
    to_rgb: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.order not in _ORDERS:
            raise ValueError(f"order must be 'RGB', 'BGR' or 'L' (a grayscale model), got {self.order!r}.")
        if not _finite(self.max_value) or self.max_value <= 0:
            raise ValueError(f"max_value must be a finite number > 0, got {self.max_value!r}.")
        object.__setattr__(self, "max_value", float(self.max_value))
        if (self.to_model is None) != (self.to_rgb is None):
            given = "to_model" if self.to_model is not None else "to_rgb"
            raise ValueError(f"only {given} was given; pass to_model and to_rgb together (an inverse pair).")
        if self.to_model is not None:
            if self.mean is not None or self.std is not None or self.max_value != 1.0 or self.order == "BGR":
                raise ValueError(
                    "to_model/to_rgb do not combine with mean, std, max_value or order 'BGR'; fold those into the "
                    "functions (order may only be 'L' for a 1-channel model)."
                )
            self.space()  # checks that the pair is inverse
            return
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _numbers(name, getattr(self, name)))
        self._check_counts()
        high = self.max_value
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}.")
        if self.mean is not None and not all(0 <= m <= high for m in self.mean):
            raise ValueError(
                f"mean {list(self.mean)} lies outside [0, max_value={high:g}]; mean and std are in units of "
                "max_value (pass max_value=255 for a [0, 255] model)."
            )
        if high > 1 and self.std is not None and max(self.std) < 1:
            raise ValueError(
                f"std {list(self.std)} is in [0, 1] units but max_value is {high:g}; give mean and std in units "
                f"of max_value (multiplied by {high:g}), or drop max_value."
            )

    def _check_counts(self) -> None:
        counts = [len(v) for v in (self.mean, self.std) if v is not None]
        if all(count == self.channels for count in counts):
            return
        got = str(counts[0]) if len(set(counts)) == 1 else f"{len(self.mean or ())} and {len(self.std or ())}"
        takes, fix = (
            (
                "'L' (grayscale) takes 1 mean and 1 std value",
                "one of each, or order 'RGB' for a 3-channel model",
            )
            if self.order == "L"
            else (
                f"{self.order!r} takes 3 mean and 3 std values",
                "order='L' for a 1-channel (grayscale) model",
            )
        )
        raise ValueError(f"order {takes}, got {got}; pass {fix}.")

    @classmethod
    def from_normalisation(cls, mean: Sequence[float], std: Sequence[float]) -> InputConvention:
        """``InputConvention(mean, std)``: the usual ``(rgb - mean) / std`` of a model on RGB in [0, 1]."""
        return cls(mean=mean, std=std)

    @property
    def channels(self) -> int:
        """Channels of the model's input: 1 for order ``"L"``, else 3."""
        return 1 if self.order == "L" else 3

    def space(self) -> InputSpace:
        """The model's input space: a :class:`ColourTransform` (channel order and ``max_value`` folded into its
        matrix), or a :class:`CallableColour` for a ``to_model``/``to_rgb`` pair."""
        if self.to_model is not None and self.to_rgb is not None:
            return CallableColour(self.to_model, self.to_rgb, self.channels)
        channels = self.channels
        mean = torch.tensor(self.mean or [0.0] * channels, dtype=torch.float64)
        std = torch.tensor(self.std or [1.0] * channels, dtype=torch.float64)
        source = _BGR if self.order == "BGR" else range(channels)  # the RGB channel each model channel reads
        rgb_mean = torch.zeros(channels, dtype=torch.float64)
        matrix = torch.zeros(channels, channels, dtype=torch.float64)
        for model_channel, rgb_channel in enumerate(source):
            rgb_mean[rgb_channel] = mean[model_channel] / self.max_value
            matrix[rgb_channel, model_channel] = self.max_value / std[model_channel]
        return ColourTransform(rgb_mean, matrix)

    def to_state(self) -> dict[str, Any]:
        """Plain JSON-able values; functions as ``"module:qualname"`` when importable, else None (``callables``
        says there was a pair, so :meth:`from_state` does not silently drop lambdas or local functions)."""
        return {
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "max_value": self.max_value,
            "order": self.order,
            "to_model": _function_path(self.to_model),
            "to_rgb": _function_path(self.to_rgb),
            "callables": self.to_model is not None,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> InputConvention:
        """The convention :meth:`to_state` wrote, its functions imported again (a ValueError names one that is not)."""
        keys = ("mean", "std", "max_value", "order", "to_model", "to_rgb", "callables")
        unknown = sorted(set(state) - set(keys))
        if unknown:
            raise ValueError(f"unknown input convention key(s) {unknown}; valid keys: {list(keys)}.")
        functions: dict[str, Any] = {
            key: _import_function(key, state[key]) for key in ("to_model", "to_rgb") if state.get(key)
        }
        if state.get("callables") and len(functions) < 2:
            raise ValueError(
                "the saved input convention's to_model/to_rgb were not importable module-level functions (e.g. "
                "lambdas), so they cannot be restored; define them at module level, or pass the convention again."
            )
        plain: dict[str, Any] = {
            key: state[key] for key in ("mean", "std", "max_value", "order") if key in state
        }
        return cls(**plain, **functions)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(name: str, values: Any) -> tuple[float, ...]:
    """``values`` (a number, list, tuple or 1-D tensor) as a tuple of finite floats."""
    items = values.reshape(-1).tolist() if isinstance(values, Tensor) else values
    items = [items] if isinstance(items, int | float) else items
    if isinstance(items, str) or not isinstance(items, Sequence) or not items or not all(map(_finite, items)):
        raise ValueError(f"{name} must be a list of finite numbers, got {values!r}.")
    return tuple(float(v) for v in items)


def _resolve(path: str) -> Any:
    module, _, qualname = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _function_path(function: Callable[[Tensor], Tensor] | None) -> str | None:
    """``"module:qualname"`` of a module-level function that imports back as itself, else None."""
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if function is None or not module or not qualname or "<" in qualname or module == "__main__":
        return None
    path = f"{module}:{qualname}"
    try:
        return path if _resolve(path) is function else None
    except (ImportError, AttributeError, ValueError):
        return None


def _import_function(key: str, path: Any) -> Callable[[Tensor], Tensor]:
    try:
        function = _resolve(str(path))
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"cannot import the input convention's {key} function {path!r} ({err}); make its module importable "
            "or pass the convention again."
        ) from err
    if not callable(function):
        raise ValueError(f"the input convention's {key} {path!r} is not a function.")
    return function
