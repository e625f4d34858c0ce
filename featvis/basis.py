"""The colour basis a render optimises in, learned from the training data when the run brings none of its own.

Inside featvis's pipeline the datamodule hands the callback a whitening fitted to its training set
(``CIFARDataModule.colour``), and renders optimise in that decorrelated colour basis. A user's own
LightningModule on plain normalised RGB has at most ``normalization_mean``/``normalization_std``: optimising per
RGB channel gives garish colours, and the identity unreadable noise. :class:`LearnedBasis` then fits a Cholesky
whitening (:meth:`ColourTransform.from_pixels`) to the images the run trains on, mapped back to RGB through the
model's input space, once per run; the render optimises in that basis while the model is still fed its own input
space (``render(..., colour=<input space>, basis=<fitted whitening>)``). Any input space works
(:data:`featvis.colour.InputSpace`): its ``to_rgb`` maps the training images back, and for a 1-channel (grayscale)
space the images, and so the basis, are grey: one mean and one standard deviation. The fit is saved in the callback's
checkpoint state, so a resumed run renders in the same basis without fitting again.

Which data, and why: the run's own training dataloader (``trainer.train_dataloader``), read once, before the
first render. That render (step 0) happens in ``on_train_start``, before any training batch exists, and all
renders of a run must share one basis so the timeline compares like with like; a few first batches would also be
a small sample. The dataloader itself is not iterated: a fresh iterator draws from its sampler's and its own
generators (shifting the training shuffle), starts the worker pool that ``persistent_workers`` would then keep
for training, and advances stateful (resumable) samplers. Instead a private ``DataLoader`` reads evenly spaced
indices of the same dataset in order, with the same ``collate_fn`` and ``num_workers``: no sampler randomness, and
a class-sorted dataset (an ``ImageFolder``) is covered evenly where its first images would be one class. The
dataset's own random transforms run in this process when there are no workers, so the global torch, Python and
NumPy random states are saved and restored around the read.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from featvis.colour import ColourTransform, InputSpace
from featvis.engine import fork_rng

#: Most training images read for the fit: plenty for a stable 3x3 colour covariance. Reading and fitting 10,000
#: CIFAR-sized images takes 2-4 s on 2 busy CPU cores, once per run (a default render there: about 2 minutes).
MAX_IMAGES = 10_000
#: Most pixels per image (a regular grid), so large images cost no more memory than CIFAR-sized ones.
MAX_PIXELS_PER_IMAGE = 1024
#: Images mapped back to RGB with more than this share of their values outside ``_FAR`` do not match the
#: model's normalisation: real RGB lies in [0, 1], and augmentation or resizing overshoots it by little.
_OUTSIDE_SHARE = 0.01
_FAR = (-0.25, 1.25)
#: Natural images have per-channel standard deviations of about 0.2-0.3; below this in every channel, the
#: images were most likely mapped back through a std that is too small (or the loader does not normalise).
_FLAT_STD = 0.08
_BATCH = 256  # batch size of the private loader when the run's loader has none (a custom batch sampler)
_KEYS = ("mean", "matrix", "inverse")  # ColourTransform buffers, saved as basis_<key>

Warn = Callable[..., None]  # featvis.outputs.WarnOnce: warn(key, message, info=False)


class LearnedBasis:
    """The colour basis a callback renders in when neither datamodule nor model has a colour transform.

    Args:
        warn: the callback's warn-once record, called as ``warn(key, message, info=False)``.
        max_images: most training images the fit reads.
    """

    def __init__(self, warn: Warn, max_images: int = MAX_IMAGES) -> None:
        self.transform: ColourTransform | None = None  # fitted, or restored from a checkpoint
        self.warn, self.max_images = warn, max_images
        self._tried = False  # fit at most once per run, even if it found nothing to fit

    def get(
        self, trainer: Any, pl_module: nn.Module, normalisation: InputSpace | None
    ) -> ColourTransform | None:
        """The basis to render ``pl_module`` in: None when the data or model has its own colour transform.

        Fits the basis at the first call that has a training dataloader; under DDP rank 0 fits and broadcasts
        it, so every rank renders its share of the targets in the same basis (every rank must call this).

        Args:
            trainer: the Lightning trainer; None outside a run (then only a fitted or restored basis is used).
            pl_module: the model.
            normalisation: the model's input space as the callback was told it (``normalization_mean``/
                ``normalization_std`` or an input convention's ``space()``); None means the model takes RGB in
                [0, 1].
        """
        if ColourTransform.find(getattr(trainer, "datamodule", None), pl_module) is not None:
            return None  # the data's own colour transform is already the basis: renders stay as they were
        loaders = getattr(trainer, "train_dataloader", None)
        loader = first_loader(loaders)
        if loader is None and loaders is not None:
            message = f"the training data is a {type(loaders).__name__}, not a torch DataLoader"
            self.warn("basis", f"FeatureVisCallback: no colour basis learned: {message}.", info=True)
        if self.transform is None and not self._tried and loader is not None:
            self._tried = True
            fitted = self._fit(loader, pl_module, normalisation) if trainer.is_global_zero else None
            self.transform = trainer.strategy.broadcast(fitted, src=0)
        return self.transform

    def _fit(
        self, loader: DataLoader, pl_module: nn.Module, normalisation: InputSpace | None
    ) -> ColourTransform | None:
        start = time.perf_counter()
        colour = normalisation if normalisation is not None else ColourTransform.identity()
        with forked_random_states(pl_module):
            rgb = read_training_images(loader, colour, self.max_images)
        if rgb is None:
            message = (
                f"the training batches hold no (N, {colour.channels}, H, W) image tensor for the input space"
            )
            self.warn("basis", f"FeatureVisCallback: no colour basis learned: {message}.", info=True)
            return None
        try:
            basis = ColourTransform.from_pixels(rgb)
        except ValueError as err:
            self.warn("basis", f"FeatureVisCallback: no colour basis learned from the training images: {err}")
            return None
        problem = range_problem(rgb, basis)
        if problem is not None:
            through = "the input convention" if normalisation is not None else "no normalisation"
            self.warn(
                "basis_range",
                f"FeatureVisCallback: the training images mapped back to RGB through {through} do not look like "
                f"RGB in [0, 1] ({problem}); pass the normalization_mean/normalization_std that the data loader "
                "applies (in [0, 1] RGB units) or the matching input_convention, or the renders' colours will be off.",
            )
        self.warn(
            "basis",
            f"FeatureVisCallback: the model has no colour transform of its own; rendering in a colour basis "
            f"fitted to {len(rgb)} training images ({time.perf_counter() - start:.1f} s).",
            info=True,
        )
        return basis

    def state_dict(self) -> dict[str, Tensor]:
        """``basis_mean``, ``basis_matrix``, ``basis_inverse`` of the fitted basis; empty without one."""
        if self.transform is None:
            return {}
        return {f"basis_{key}": getattr(self.transform, key).detach().cpu().clone() for key in _KEYS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the basis saved by :meth:`state_dict`; without one (an older checkpoint) it is fitted anew."""
        restored = self.restore(state)
        if restored is not None:
            self.transform = restored

    @staticmethod
    def restore(state: Mapping[str, Any]) -> ColourTransform | None:
        """The basis saved by :meth:`state_dict` (e.g. a checkpoint's callback state); None without one."""
        if not all(f"basis_{key}" in state for key in _KEYS):
            return None
        transform = ColourTransform.identity(len(state["basis_mean"]))
        # The saved buffers bit for bit (the inverse is not recomputed), so renders come out identical.
        transform.load_state_dict({key: state[f"basis_{key}"] for key in _KEYS})
        return transform


def read_training_images(
    loader: DataLoader,
    colour: InputSpace,
    max_images: int = MAX_IMAGES,
    max_pixels: int | None = MAX_PIXELS_PER_IMAGE,
) -> Tensor | None:
    """Up to ``max_images`` training images of ``loader``'s dataset, mapped back to RGB through ``colour``.

    Reads evenly spaced indices of a map-style dataset (the first images of an iterable one) through a private
    loader with ``loader``'s ``collate_fn`` and ``num_workers``; ``loader`` itself, its sampler and its
    generators are not touched. Images larger than ``max_pixels`` pixels keep a regular grid of pixels. The caller
    forks the global random states (see :func:`forked_random_states`).

    Args:
        loader: the run's training dataloader; its batches hold model-space images ``(N, C, H, W)`` with the
            input space's C channels, alone or as the first such tensor of a tuple, list or dict.
        colour: the model's input space (RGB in [0, 1], or grey for a 1-channel space, to model space).
        max_images: most images to read.
        max_pixels: most pixels per image (enough for colour statistics); None keeps whole images (spectra).

    Returns:
        ``(N, C, h, w)`` float32 images on the CPU (not clipped): RGB, or grey for a 1-channel space; None when no
        batch holds images.
    """
    dataset = loader.dataset
    if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
        count = len(dataset)
        picked = min(count, max_images)
        dataset = Subset(dataset, [i * count // picked for i in range(picked)])
    private = private_loader(loader, dataset)
    to_rgb = colour.copy("cpu", torch.float32).to_rgb
    parts: list[Tensor] = []
    read = 0
    for batch in private:
        images = _images_in(batch, colour.channels)
        if images is None:
            break
        images = images[: max_images - read].detach().to("cpu", torch.float32)
        pixels = images.shape[-2] * images.shape[-1]
        step = math.ceil(math.sqrt(pixels / max_pixels)) if max_pixels is not None else 1
        parts.append(to_rgb(images[..., ::step, ::step]))
        read += len(images)
        if read >= max_images:
            break
    return torch.cat(parts) if parts else None


def private_loader(loader: DataLoader, dataset: Any) -> DataLoader:
    """A loader of ``dataset`` in order, with ``loader``'s batch size, ``collate_fn`` and workers, and no sampler.

    Reading through it leaves ``loader``, its sampler and its generators untouched (see the module docstring).

    Args:
        loader: the run's training dataloader.
        dataset: what to read, e.g. a ``Subset`` of ``loader.dataset``.
    """
    batched = loader.batch_sampler is not None  # else the dataset yields whole batches itself
    return DataLoader(
        dataset,
        batch_size=(loader.batch_size or _BATCH) if batched else None,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if loader.num_workers else None,
    )


def range_problem(rgb: Tensor, basis: ColourTransform) -> str | None:
    """Why ``rgb`` (training images mapped back to RGB) cannot be RGB in [0, 1], or None when it can.

    Args:
        rgb: ``(N, C, H, W)`` images, RGB or grey.
        basis: the whitening fitted to them (its inverse holds their colour standard deviations).
    """
    low, high = _FAR
    outside = float(((rgb < low) | (rgb > high)).float().mean())
    if outside > _OUTSIDE_SHARE:
        lowest, highest = float(rgb.min()), float(rgb.max())
        return (
            f"{outside:.0%} of their values lie outside [{low}, {high}], from {lowest:.2f} to {highest:.2f}"
        )
    std = basis.inverse.norm(dim=0)  # cov = W^-T W^-1: per-channel standard deviations are its column norms
    if float(std.max()) < _FLAT_STD:
        spread = ", ".join(f"{value:.3f}" for value in std.tolist())
        return f"their channels' standard deviations are only {spread}; natural images have about 0.25"
    return None


@contextmanager
def forked_random_states(model: nn.Module, seed: int | None = None) -> Iterator[None]:
    """Restore the global torch (CPU and the model's CUDA device), Python and NumPy random states on exit.

    A dataset's random transforms draw from any of them; training must see the same streams as without featvis.

    Args:
        model: the network whose CUDA device's generator is saved too.
        seed: seed the CPU torch, Python and NumPy states inside, so a read through random transforms gives the
            same images in every process and after a resume; None leaves them as they are.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with fork_rng(model):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def first_loader(loaders: object) -> DataLoader | None:
    """The first DataLoader of a trainer's training loaders (one, or a list or dict of them)."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, list | tuple) and loaders:
        return first_loader(loaders[0])
    return loaders if isinstance(loaders, DataLoader) else None


def _images_in(batch: object, channels: int = 3) -> Tensor | None:
    """The batch itself if it is an ``(N, channels, H, W)`` tensor, else the first such entry of a tuple, list or
    dict."""
    entries = list(batch.values()) if isinstance(batch, Mapping) else batch
    for entry in entries if isinstance(entries, list | tuple) else [entries]:
        if isinstance(entry, Tensor) and entry.ndim == 4 and entry.shape[1] == channels:
            return entry
    return None


__all__ = [
    "MAX_IMAGES",
    "LearnedBasis",
    "first_loader",
    "forked_random_states",
    "private_loader",
    "range_problem",
    "read_training_images",
]
