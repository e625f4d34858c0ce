"""``FeatureVisCallback``: render what the classifier responds to after every n-th epoch and log it.

A thin Lightning adapter over :func:`featvis.engine.render`. All optimisation happens in the engine; this module
decides *when* to render (once before training, then at the end of every ``every_n_epochs``-th epoch), *what*
(class logits by default, or channels / neurons of a named layer), in which colour space and size (from the
datamodule, the LightningModule or the arguments), and *where* the pictures go (TensorBoard images and scalars,
PNG files under the log dir, a timeline at the end of fit).

It leaves training untouched: the engine restores train/eval flags, never writes parameter gradients and draws
its randomness from a private generator seeded identically every epoch, and the callback additionally forks the
global torch RNG around each render. Under DDP the targets are split across ranks, gathered with one collective
that every rank joins, and only rank 0 writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor, nn

from featvis import images as img
from featvis.colour import ColourTransform
from featvis.engine import (
    Channel,
    ClassLogit,
    LayerCapture,
    Neuron,
    Objective,
    RenderConfig,
    preserved_modes,
    render,
)
from featvis.engine import metrics as metrics_lib
from featvis.engine import resolve_layer as _resolve_layer

_AUTOCAST = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
_RESERVED_TAGS = {"all", "timeline"}
_STATE_FORMAT = 1


class FeatureVisCallback(Callback):
    """Render feature visualisations with :func:`featvis.engine.render` during training and log them.

    Renders once before training (logged at step 0) and at the end of every ``every_n_epochs``-th training epoch
    (epoch ``e``, counted from 1, is logged at step ``e``), with the same seed every time, so the starting noise
    and the augmentation draws are identical and only the model changes between pictures. The visualised module
    is the LightningModule itself: its ``forward`` must map model-space images ``(N, 3, H, W)`` to logits.

    Output (``<prefix>`` is ``featvis`` by default; ``<name>`` is a class name, or ``<layer>.ch<c>`` /
    ``<layer>.neuron<c>`` for layer targets):

    * TensorBoard (``logger.experiment.add_image``): ``<prefix>/<name>`` (that target's images side by side,
      nearest-neighbour upsampled), ``<prefix>/all`` (targets x images) and, at the end of fit,
      ``<prefix>/timeline`` (targets x rendered epochs). Other loggers get the PNG files only (with a one-time
      warning); scalars go to every logger.
    * Scalars at the same steps: ``<prefix>/target_prob`` (mean softmax probability of the target class over
      the class targets' images), ``<prefix>/objective`` (mean final objective value), ``<prefix>/render_seconds``
      and, with ``reference_model``, ``<prefix>/transfer_acc``.
    * PNG files: ``<log_dir>/<prefix>/epoch_<NNN>/<name>/<i>.png`` (native size; epoch 000 is before training)
      and ``<log_dir>/<prefix>/timeline.png``; ``log_dir`` is ``trainer.log_dir`` (``default_root_dir`` without a
      logger).

    The colour space is taken from, in this order: ``normalization_mean``/``normalization_std``, the datamodule's
    ``colour``, the LightningModule's ``colour``, else plain RGB in [0, 1]. The image size from: ``image_size``,
    the datamodule's ``image_size``, the LightningModule's ``image_size`` or ``example_input_array``, else 32.
    Class names from the datamodule's ``classes``, else the LightningModule's ``class_names``, else the indices.

    Args:
        every_n_epochs: render at the end of every n-th training epoch (epochs counted from 1).
        targets: classes to render, as indices or class names; None renders every class (unless ``layer`` is
            set, in which case only the layer's targets are rendered).
        layer: name of a layer as in ``pl_module.named_modules()`` (e.g. ``net.group2.conv1.conv``) whose
            channels (or neurons) are rendered in addition to ``targets``.
        channels: channel indices of ``layer``; None takes the first ``min(10, channels)`` channels.
        neuron: render the centre neuron of each channel (spatial position ``H // 2, W // 2``) instead of the
            channel's mean activation.
        images_per_target: images rendered per target.
        image_size: side length of the rendered images in pixels; None takes it from the datamodule or module.
        normalization_mean: RGB mean of an ordinary ``(rgb - mean) / std`` input normalisation, 3 values in
            [0, 1] units; use with ``normalization_std`` for models that have no colour transform of their own.
        normalization_std: RGB standard deviation of that normalisation, 3 positive values.
        steps: optimisation steps per render.
        lr: learning rate of the render's Adam optimiser.
        parameterisation: ``"fourier"`` (1/f-scaled spectrum) or ``"pixel"``.
        decorrelate: optimise colours in the data's decorrelated basis.
        augment: apply the engine's random per-image transforms (sized for the image size) at every step.
        diversity_layer: layer (as in ``pl_module.named_modules()``) whose Gram matrices push a target's images
            apart; None turns the diversity term off.
        diversity_weight: strength of the diversity term.
        seed: seed of the render's private random generator; the same every epoch.
        max_batch_size: largest number of images per forward pass of a render (None: all in one batch).
        autocast: ``"auto"`` (bfloat16 where the device runs it fast), ``"bf16"``, ``"fp16"`` or ``"none"``.
        display_scale: nearest-neighbour upsampling factor of the logged images; None picks ``128 // size``
            (at least 1), i.e. 4 for 32-px images.
        render_before_training: render once before the first training epoch (step 0).
        save_png: write the PNG files and the timeline PNG.
        metrics: log quality scalars of every render with :mod:`featvis.engine.metrics`: ``robustness`` (target
            probability under fresh random affine transforms), ``spectral_gap`` (against the datamodule's
            training images, when it has ``split("train")``) and ``diversity`` (penultimate-feature distance
            between a target's images).
        reference_model: a second classifier that classifies the visualisations, logged as ``transfer_acc``: a
            ``ClassifierModule`` checkpoint path, or an ``nn.Module`` mapping model-space images (its own
            ``colour`` if it has one, else the trained model's) to logits.
        prefix: tag prefix and name of the PNG folder, so several callbacks can share one run.

    Raises:
        ValueError: an argument is out of range or of the wrong kind; at setup, a class index or name that the
            data does not have (the message lists the valid range or names), or an unknown layer.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        targets: list[int | str] | None = None,
        layer: str | None = None,
        channels: list[int] | None = None,
        neuron: bool = False,
        images_per_target: int = 4,
        image_size: int | None = None,
        normalization_mean: list[float] | None = None,
        normalization_std: list[float] | None = None,
        steps: int = RenderConfig.steps,
        lr: float = RenderConfig.lr,
        parameterisation: Literal["fourier", "pixel"] = "fourier",
        decorrelate: bool = True,
        augment: bool = True,
        diversity_layer: str | None = None,
        diversity_weight: float = RenderConfig.diversity_weight,
        seed: int = 0,
        max_batch_size: int | None = None,
        autocast: Literal["auto", "bf16", "fp16", "none"] = "auto",
        display_scale: int | None = None,
        render_before_training: bool = True,
        save_png: bool = True,
        metrics: bool = True,
        reference_model: str | nn.Module | None = None,
        prefix: str = "featvis",
    ) -> None:
        super().__init__()
        _check_int("every_n_epochs", every_n_epochs, 1)
        _check_int("images_per_target", images_per_target, 1)
        _check_int("steps", steps, 0)
        _check_int("seed", seed, None)
        for name, value in (("image_size", image_size), ("max_batch_size", max_batch_size)):
            if value is not None:
                _check_int(name, value, 1)
        if display_scale is not None:
            _check_int("display_scale", display_scale, 1)
        if max_batch_size is not None and max_batch_size < images_per_target:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) must be >= images_per_target ({images_per_target})."
            )
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}.")
        if (
            isinstance(diversity_weight, bool)
            or not isinstance(diversity_weight, int | float)
            or not math.isfinite(diversity_weight)
            or diversity_weight < 0
        ):
            raise ValueError(f"diversity_weight must be a finite number >= 0, got {diversity_weight!r}.")
        if parameterisation not in ("fourier", "pixel"):
            raise ValueError(f"parameterisation must be 'fourier' or 'pixel', got {parameterisation!r}.")
        if autocast not in _AUTOCAST:
            raise ValueError(f"autocast must be one of {sorted(_AUTOCAST)}, got {autocast!r}.")
        for name, flag in (
            ("neuron", neuron),
            ("decorrelate", decorrelate),
            ("augment", augment),
            ("render_before_training", render_before_training),
            ("save_png", save_png),
            ("metrics", metrics),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}.")
        if targets is not None:
            if isinstance(targets, str | int) or not isinstance(targets, Sequence):
                raise ValueError(
                    f"targets must be a list of class indices or names (or None), got {targets!r}."
                )
            if len(targets) == 0:
                raise ValueError("targets is empty; pass None to render every class.")
            for target in targets:
                if isinstance(target, bool) or not isinstance(target, int | str):
                    raise ValueError(f"targets must hold class indices or names, got {target!r}.")
                if isinstance(target, int) and target < 0:
                    raise ValueError(f"class index {target} is negative; indices start at 0.")
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"layer must be a non-empty layer name or None, got {layer!r}.")
        if diversity_layer is not None and (not isinstance(diversity_layer, str) or not diversity_layer):
            raise ValueError(
                f"diversity_layer must be a non-empty layer name or None, got {diversity_layer!r}."
            )
        if channels is not None:
            if layer is None:
                raise ValueError("channels needs layer: name the layer whose channels should be rendered.")
            if isinstance(channels, int) or not isinstance(channels, Sequence) or len(channels) == 0:
                raise ValueError(f"channels must be a non-empty list of channel indices, got {channels!r}.")
            for channel in channels:
                _check_int("channel", channel, 0)
        if neuron and layer is None:
            raise ValueError("neuron=True needs layer: name the layer whose neurons should be rendered.")
        if (normalization_mean is None) != (normalization_std is None):
            raise ValueError("normalization_mean and normalization_std must be given together.")
        self.colour: ColourTransform | None = None
        if normalization_mean is not None:
            if len(normalization_mean) != 3:
                raise ValueError(
                    f"normalization_mean must hold 3 values (R, G, B), got {normalization_mean!r}."
                )
            # from_normalisation checks std (3 positive values).
            self.colour = ColourTransform.from_normalisation(
                list(normalization_mean), list(normalization_std)
            )
        if reference_model is not None and not isinstance(reference_model, str | Path | nn.Module):
            raise ValueError(
                f"reference_model must be a checkpoint path or an nn.Module, got {type(reference_model).__name__}."
            )
        if not isinstance(prefix, str) or img.safe_name(prefix) != prefix:
            raise ValueError(f"prefix must be a plain name (letters, digits, '.', '_', '-'), got {prefix!r}.")

        self.every_n_epochs = every_n_epochs
        self.targets = list(targets) if targets is not None else None
        self.layer = layer
        self.channels = list(channels) if channels is not None else None
        self.neuron = neuron
        self.images_per_target = images_per_target
        self.image_size = image_size
        self.steps = steps
        self.lr = float(lr)
        self.parameterisation = parameterisation
        self.decorrelate = decorrelate
        self.augment = augment
        self.diversity_layer = diversity_layer
        self.diversity_weight = float(diversity_weight)
        self.seed = seed
        self.max_batch_size = max_batch_size
        self.autocast = autocast
        self.display_scale = display_scale
        self.render_before_training = render_before_training
        self.save_png = save_png
        self.metrics = metrics
        self.reference_model = reference_model
        self.prefix = prefix

        # Resolved at setup / first render.
        self._class_names: list[str] | None = None
        self._class_indices: list[int] | None = None
        self._objectives: list[Objective] | None = None
        self._names: list[str] | None = None
        self._reference: nn.Module | None = None
        self._warned: set[str] = set()
        self._saved_names: list[str] | None = None
        self._spectrum: Tensor | None = None
        # Timeline state, saved in checkpoints so a resumed run continues it.
        self._epochs: list[int] = []
        # Per rendered epoch: (T, 3, H, W) uint8, the first image of each target.
        self._thumbs: list[Tensor] = []

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            prefix=self.prefix,
            targets=self.targets,
            layer=self.layer,
            channels=self.channels,
            neuron=self.neuron,
        )

    def state_dict(self) -> dict[str, Any]:
        thumbs = torch.stack(self._thumbs) if self._thumbs else None
        return {
            "format": _STATE_FORMAT,
            "seed": self.seed,
            "every_n_epochs": self.every_n_epochs,
            "epochs": list(self._epochs),
            "names": list(self._names) if self._names is not None else None,
            "thumbs": thumbs,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("format") != _STATE_FORMAT:
            rank_zero_warn(
                f"FeatureVisCallback: ignoring checkpoint state of unknown format {state_dict.get('format')}."
            )
            return
        # The saved seed wins, so the resumed run draws the same noise and augmentations as before.
        self.seed = int(state_dict["seed"])
        self._epochs = [int(e) for e in state_dict["epochs"]]
        thumbs = state_dict.get("thumbs")
        self._thumbs = list(thumbs.unbind(0)) if thumbs is not None else []
        self._saved_names = state_dict.get("names")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(trainer, "datamodule", None)
        self._class_names = _class_names(datamodule, pl_module)
        if self.targets is not None:
            self._class_indices = [self._class_index(t) for t in self.targets]
        for name in (self.layer, self.diversity_layer):
            if name is not None:
                _resolve_layer(pl_module, name)  # unknown layer -> ValueError naming the closest layers
        if isinstance(self.reference_model, str | Path):
            from featvis.model import load_classifier

            self._reference = load_classifier(str(self.reference_model))
        elif isinstance(self.reference_model, nn.Module):
            self._reference = self.reference_model

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer):
            return
        epoch = trainer.current_epoch
        if epoch == 0:
            if self.render_before_training and 0 not in self._epochs:
                self._render_and_log(trainer, pl_module, 0)
            return
        # Resumed at an epoch boundary whose render is missing (e.g. the checkpoint was written before it).
        mid_epoch = trainer.fit_loop.epoch_loop.batch_progress.current.completed > 0
        if self._epochs and not mid_epoch and epoch % self.every_n_epochs == 0 and epoch not in self._epochs:
            self._render_and_log(trainer, pl_module, epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Render before ModelCheckpoint saves at the end of validation (Lightning orders it last), so the
        # checkpoint's callback state already holds this epoch and a resumed run does not repeat it.
        if self._skip(trainer) or trainer.state.fn != "fit":
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress
        at_epoch_end = progress.is_last_batch or progress.current.ready >= trainer.num_training_batches
        if at_epoch_end:
            self._maybe_render_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip(trainer):
            self._maybe_render_epoch(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer) or not self._thumbs:
            return
        log_dir = _log_dir(trainer)  # collective under DDP: every rank calls it
        self._log_timeline(trainer, log_dir)

    # ------------------------------------------------------------------ rendering

    def _skip(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return True
        if trainer.fast_dev_run:
            if "fast_dev_run" not in self._warned:
                self._warned.add("fast_dev_run")
                rank_zero_info("FeatureVisCallback: skipped under fast_dev_run.")
            return True
        return False

    def _maybe_render_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 and epoch not in self._epochs:
            self._render_and_log(trainer, pl_module, epoch)

    def render(self, pl_module: nn.Module, trainer: pl.Trainer | None = None) -> dict[str, Any]:
        """Render this callback's targets for ``pl_module`` as it is now, without logging anything.

        Under DDP (``trainer`` with ``world_size > 1``) every rank must call it; the targets are split across the
        ranks and the result is gathered on all of them.

        Args:
            pl_module: the model (a LightningModule or any module mapping model-space images to logits).
            trainer: the trainer, for the datamodule, the ranks and the gather; None renders in this process.

        Returns:
            A dict with ``rgb`` ``(T, K, 3, H, W)`` in [0, 1] on the CPU, ``values`` ``(T, K)``, ``probs``
            ``(T, K)`` (softmax probability of the target class, NaN for layer targets), ``names`` (one per
            target) and ``seconds``.
        """
        with torch.inference_mode(False), torch.no_grad(), _fork_rng(pl_module):
            return self._render(pl_module, trainer)

    def _render(self, pl_module: nn.Module, trainer: pl.Trainer | None) -> dict[str, Any]:
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if self._class_names is None:
            self._class_names = _class_names(datamodule, pl_module)
        colour = self._colour(datamodule, pl_module)
        size = self._size(datamodule, pl_module)
        if self._objectives is None:
            self._objectives, self._names = self._build_objectives(pl_module, size)
        objectives = self._objectives
        count, k = len(objectives), self.images_per_target
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        per_rank = -(-count // world)
        mine = objectives[rank * per_rank : (rank + 1) * per_rank]
        device = _device(pl_module)

        rgb = torch.zeros(per_rank, k, 3, size, size, device=device)
        values = torch.full((per_rank, k), float("nan"), device=device)
        probs = torch.full((per_rank, k), float("nan"), device=device)
        seconds = torch.zeros(1, device=device)
        if mine:
            result = render(
                pl_module,
                mine,
                colour=colour,
                images_per_target=k,
                image_size=size,
                parameterisation=self.parameterisation,
                decorrelate=self.decorrelate,
                transforms=None if self.augment else [],
                diversity_layer=self.diversity_layer,
                diversity_weight=self.diversity_weight,
                steps=self.steps,
                lr=self.lr,
                seed=self.seed,
                max_batch_size=self.max_batch_size,
                autocast_dtype=_AUTOCAST[self.autocast],
            )
            n = len(mine)
            rgb[:n] = result.rgb.to(device)
            values[:n] = result.values.to(device)
            probs[:n] = _target_probs(pl_module, result.model_input.to(device), mine)
            seconds[0] = result.seconds
        if world > 1:
            packed = torch.cat([rgb.flatten(1), values, probs, seconds.expand(per_rank, 1)], dim=1).float()
            gathered = trainer.strategy.all_gather(packed)  # every rank joins; (world, per_rank, D)
            gathered = gathered.reshape(world * per_rank, -1)[:count].cpu()
            pixels = k * 3 * size * size
            rgb = gathered[:, :pixels].reshape(count, k, 3, size, size)
            values = gathered[:, pixels : pixels + k]
            probs = gathered[:, pixels + k : pixels + 2 * k]
            secs = float(gathered[:, -1].max())
        else:
            rgb, values, probs, secs = (
                rgb[:count].cpu(),
                values[:count].cpu(),
                probs[:count].cpu(),
                float(seconds),
            )
        return {"rgb": rgb, "values": values, "probs": probs, "names": list(self._names), "seconds": secs}

    def _render_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        # Lightning may call this under inference mode (end of validation); keep our tensors ordinary ones.
        with torch.inference_mode(False), torch.no_grad():
            self._render_and_log_impl(trainer, pl_module, epoch)

    def _render_and_log_impl(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        result = self.render(pl_module, trainer)
        log_dir = _log_dir(trainer)  # collective under DDP: every rank calls it, outside the rank-zero guard
        rgb = result["rgb"]
        if self._saved_names is not None:
            if self._saved_names != result["names"] or (
                self._thumbs and self._thumbs[0].shape[1:] != rgb.shape[2:]
            ):
                rank_zero_warn(
                    "FeatureVisCallback: the checkpoint's timeline was rendered for other targets or another image "
                    "size; the timeline restarts with this run."
                )
                self._epochs, self._thumbs = [], []
            self._saved_names = None
        self._epochs.append(epoch)
        self._thumbs.append((rgb[:, 0].clamp(0, 1) * 255).round().to(torch.uint8))
        self._log(trainer, pl_module, log_dir, epoch, result)

    def _metrics(self, result: dict[str, Any], pl_module: nn.Module, trainer: pl.Trainer) -> dict[str, float]:
        """Scalars of one render (rank 0 only: no collectives in here)."""
        prefix = self.prefix
        metrics = {
            f"{prefix}/objective": float(result["values"].float().nanmean()),
            f"{prefix}/render_seconds": float(result["seconds"]),
        }
        probs = result["probs"]
        if bool(torch.isfinite(probs).any()):
            metrics[f"{prefix}/target_prob"] = float(probs.nanmean())
        if not self.metrics and self._reference is None:
            return metrics
        datamodule = getattr(trainer, "datamodule", None)
        colour = self._colour(datamodule, pl_module)
        rgb = result["rgb"]
        count, k = rgb.shape[:2]
        rows = [i for i, o in enumerate(self._objectives) if isinstance(o, ClassLogit)]
        classes = torch.tensor([self._objectives[i].index for i in rows], dtype=torch.long)
        class_rgb = rgb[rows].flatten(0, 1)
        class_targets = classes.repeat_interleave(k)
        with torch.inference_mode(False), torch.no_grad(), _fork_rng(pl_module):
            if self.metrics:
                preprocess = _Preprocess(colour, pl_module)
                if rows:
                    # Fresh random shifts/zooms/rotations the render never saw (its own seed differs).
                    metrics[f"{prefix}/robustness"] = metrics_lib.robustness(
                        pl_module,
                        class_rgb,
                        class_targets,
                        preprocess=preprocess,
                        repeats=4,
                        seed=self.seed + 1,
                    )
                spectrum = self._train_spectrum(datamodule, rgb.shape[-1])
                if spectrum is not None:
                    vis = metrics_lib.radial_log_spectrum(rgb.flatten(0, 1), max_radius=spectrum.numel())
                    metrics[f"{prefix}/spectral_gap"] = float((vis - spectrum).abs().mean())
                if k >= 2:
                    try:
                        features = metrics_lib.penultimate_features(pl_module, rgb.flatten(0, 1), preprocess)
                    except ValueError as err:  # e.g. no nn.Linear head
                        self._warn_once("diversity", f"FeatureVisCallback: no diversity metric ({err})")
                    else:
                        groups = torch.arange(count).repeat_interleave(k)
                        metrics[f"{prefix}/diversity"] = metrics_lib.feature_diversity(features, groups)
            if self._reference is not None and rows:
                reference = _RGBInput(self._reference, self._reference_colour(colour))
                accuracy = metrics_lib.transfer_accuracy(reference, class_rgb, class_targets)
                metrics[f"{prefix}/transfer_acc"] = float(accuracy)
        return metrics

    def _train_spectrum(self, datamodule: Any, size: int) -> Tensor | None:
        """Radial log spectrum of (up to 5,000 evenly spaced) training images, computed once; None without them."""
        if self._spectrum is not None:
            return self._spectrum if self._spectrum.numel() else None
        self._spectrum = torch.empty(0)
        split = getattr(datamodule, "split", None)
        if not callable(split):
            message = "FeatureVisCallback: no spectral_gap (the datamodule has no split())."
            self._warn_once("spectrum", message, info=True)
            return None
        images = split("train")[0]
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != size or images.shape[-2] != size:
            self._warn_once(
                "spectrum",
                f"FeatureVisCallback: no spectral_gap (training images of shape {tuple(images.shape[1:])} "
                f"do not match the {size}-px renders).",
                info=True,
            )
            return None
        images = images[:: max(1, images.shape[0] // 5000)][:5000]
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        self._spectrum = metrics_lib.radial_log_spectrum(images, max_radius=min(16, size // 2))
        return self._spectrum

    def _reference_colour(self, colour: ColourTransform) -> ColourTransform:
        own = getattr(self._reference, "colour", None)
        return own if isinstance(own, ColourTransform) else colour

    def _warn_once(self, key: str, message: str, info: bool = False) -> None:
        if key not in self._warned:
            self._warned.add(key)
            (rank_zero_info if info else rank_zero_warn)(message)

    @rank_zero_only
    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        log_dir: Path,
        epoch: int,
        result: dict[str, Any],
    ) -> None:
        metrics = self._metrics(result, pl_module, trainer)
        rgb, names = result["rgb"], result["names"]
        if self.save_png:
            img.write_image_folder(rgb, names, log_dir / self.prefix / f"epoch_{epoch:03d}")
        scale = self._scale(rgb.shape[-1])
        for writer in self._writers(trainer):
            for target, name in enumerate(names):
                strip = img.grid(rgb[target : target + 1], scale=scale, padding=2)
                writer.add_image(f"{self.prefix}/{name}", strip, global_step=epoch, dataformats="CHW")
            writer.add_image(
                f"{self.prefix}/all", img.grid(rgb, scale=scale, padding=2), epoch, dataformats="CHW"
            )
            writer.flush()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=epoch)

    @rank_zero_only
    def _log_timeline(self, trainer: pl.Trainer, log_dir: Path) -> None:
        order = sorted(range(len(self._epochs)), key=lambda i: self._epochs[i])
        thumbs = torch.stack([self._thumbs[i] for i in order], dim=1).float() / 255  # (T, E, 3, H, W)
        picture = img.grid(thumbs, scale=self._scale(thumbs.shape[-1]), padding=2)
        if self.save_png:
            img.save_png(picture, log_dir / self.prefix / "timeline.png")
        for writer in self._writers(trainer):
            writer.add_image(
                f"{self.prefix}/timeline", picture, global_step=max(self._epochs), dataformats="CHW"
            )
            writer.flush()

    def _writers(self, trainer: pl.Trainer) -> list[Any]:
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        others = [
            type(logger).__name__ for logger in trainer.loggers if not isinstance(logger, TensorBoardLogger)
        ]
        if others and "loggers" not in self._warned:
            self._warned.add("loggers")
            rank_zero_warn(
                f"FeatureVisCallback logs images to TensorBoard only; for {others} they are written as PNG files "
                f"under <log_dir>/{self.prefix}/ (scalars go to every logger)."
            )
        return writers

    # ------------------------------------------------------------------ resolution of targets, colour, size

    def _class_index(self, target: int | str) -> int:
        names = self._class_names
        if isinstance(target, str):
            if names is None:
                raise ValueError(
                    f"class name {target!r} cannot be resolved: neither the datamodule (classes) nor the "
                    "LightningModule (class_names) names the classes; pass class indices instead."
                )
            if target not in names:
                raise ValueError(f"unknown class name {target!r}; valid names: {names}.")
            return names.index(target)
        if names is not None and target >= len(names):
            raise ValueError(
                f"class index {target} is out of range: there are {len(names)} classes (valid: 0..{len(names) - 1})."
            )
        return target

    def _build_objectives(self, pl_module: nn.Module, size: int) -> tuple[list[Objective], list[str]]:
        names = self._class_names
        objectives: list[Objective] = []
        labels: list[str] = []
        indices = self._class_indices
        if indices is None and self.targets is not None:
            indices = self._class_indices = [self._class_index(t) for t in self.targets]
        if indices is None and self.layer is None:
            count = len(names) if names is not None else _probe_classes(pl_module, size)
            indices = self._class_indices = list(range(count))
        for index in indices or []:
            name = names[index] if names is not None and index < len(names) else str(index)
            objectives.append(ClassLogit(index, name))
            labels.append(name)
        if self.layer is not None:
            channels = self.channels
            if channels is None:
                width = _probe_channels(pl_module, self.layer, size)
                channels = list(range(min(10, width)))
            for channel in channels:
                if self.neuron:
                    objectives.append(Neuron(self.layer, channel))
                    labels.append(f"{self.layer}.neuron{channel}")
                else:
                    objectives.append(Channel(self.layer, channel))
                    labels.append(f"{self.layer}.ch{channel}")
        return objectives, _unique_tags(labels)

    def _class_indices_of_objectives(self) -> list[int]:
        return [o.index for o in self._objectives or [] if isinstance(o, ClassLogit)]

    def _colour(self, datamodule: Any, pl_module: nn.Module) -> ColourTransform:
        if self.colour is not None:
            return self.colour
        for source in (datamodule, pl_module):
            colour = getattr(source, "colour", None)
            if isinstance(colour, ColourTransform):
                return colour
        if "colour" not in self._warned:
            self._warned.add("colour")
            rank_zero_warn(
                "FeatureVisCallback: neither the datamodule nor the LightningModule has a `colour` transform, so "
                "the model is assumed to take RGB in [0, 1]; pass normalization_mean/normalization_std if its "
                "inputs are normalised."
            )
        return ColourTransform.identity()

    def _size(self, datamodule: Any, pl_module: nn.Module) -> int:
        if self.image_size is not None:
            return self.image_size
        for source in (datamodule, pl_module):
            size = getattr(source, "image_size", None)
            if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                return size
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and example.ndim == 4:
            return int(example.shape[-1])
        return 32

    def _scale(self, size: int) -> int:
        return self.display_scale if self.display_scale is not None else max(1, 128 // size)


# ---------------------------------------------------------------------- helpers


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}.")


def _class_names(datamodule: Any, pl_module: nn.Module) -> list[str] | None:
    for source, attribute in ((datamodule, "classes"), (pl_module, "class_names")):
        names = getattr(source, attribute, None)
        if isinstance(names, Sequence) and not isinstance(names, str) and len(names) > 0:
            return [str(n) for n in names]
    return None


def _unique_tags(labels: list[str]) -> list[str]:
    tags: list[str] = []
    for label in labels:
        tag = img.safe_name(label)
        if tag in _RESERVED_TAGS:
            tag = f"{tag}_"
        base, n = tag, 1
        while tag in tags:
            n += 1
            tag = f"{base}_{n}"
        tags.append(tag)
    return tags


def _device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _dtype(module: nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _fork_rng(module: nn.Module) -> Any:
    """Save and restore the global torch RNG state (CPU, and the CUDA device the module lives on)."""
    device = _device(module)
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _log_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


def _probe(pl_module: nn.Module, layers: list[str], size: int) -> tuple[Tensor, dict[str, Tensor]]:
    device, dtype = _device(pl_module), _dtype(pl_module)
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        _fork_rng(pl_module),
        preserved_modes(pl_module),
        LayerCapture(pl_module, layers) as capture,
    ):
        logits = pl_module(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
        return logits, capture.take()


def _probe_classes(pl_module: nn.Module, size: int) -> int:
    logits, _ = _probe(pl_module, [], size)
    return int(logits.shape[-1])


def _probe_channels(pl_module: nn.Module, layer: str, size: int) -> int:
    _, acts = _probe(pl_module, [layer], size)
    act = acts[layer]
    if act.ndim < 2:
        raise ValueError(f"layer {layer!r} outputs shape {tuple(act.shape)}, which has no channel axis.")
    return int(act.shape[1])


def _target_probs(pl_module: nn.Module, model_input: Tensor, objectives: list[Objective]) -> Tensor:
    """Softmax probability of each class target's class on its own images; NaN for other targets."""
    count, k = model_input.shape[:2]
    probs = torch.full((count, k), float("nan"), device=model_input.device)
    rows = [i for i, o in enumerate(objectives) if isinstance(o, ClassLogit)]
    if not rows:
        return probs
    with preserved_modes(pl_module):
        logits = pl_module(model_input[rows].flatten(0, 1).to(_dtype(pl_module))).float()
    soft = logits.softmax(dim=1).view(len(rows), k, -1)
    index = torch.tensor([objectives[i].index for i in rows], device=soft.device)
    probs[rows] = soft.gather(2, index.view(-1, 1, 1).expand(-1, k, 1)).squeeze(2)
    return probs


class _Preprocess:
    """RGB in [0, 1] to the model's input space and dtype (``colour.to_model``), on the images' device."""

    def __init__(self, colour: ColourTransform, model: nn.Module) -> None:
        self.colour = ColourTransform(colour.mean.detach().clone(), colour.matrix.detach().clone())
        self.colour.to(_device(model))
        self.dtype = _dtype(model)

    def __call__(self, rgb: Tensor) -> Tensor:
        return self.colour.to(rgb.device).to_model(rgb.float()).to(self.dtype)


class _RGBInput(nn.Module):
    """A classifier on model-space inputs seen as one on RGB in [0, 1] (what ``transfer_accuracy`` expects)."""

    def __init__(self, model: nn.Module, colour: ColourTransform) -> None:
        super().__init__()
        self.model = model
        self.preprocess = _Preprocess(colour, model)

    def forward(self, rgb: Tensor) -> Tensor:
        return self.model(self.preprocess(rgb))


__all__ = ["FeatureVisCallback"]
