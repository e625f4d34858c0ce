"""``FeatureVisCallback``: render what the classifier responds to after every n-th epoch and log it.

A thin Lightning adapter: :func:`featvis.engine.render` optimises the images, :mod:`featvis.targets` says what
to render, :func:`featvis.quality.score_render` scores it, :mod:`featvis.outputs` writes it and
:mod:`featvis.basis` learns the colour basis from the training data when the run has none. This module owns
only the Lightning concerns: which hooks render (once before training, then every ``every_n_epochs``-th epoch),
at which step they log (the trainer's global step, the x axis of Lightning's own charts), the timeline state saved
in checkpoints (and, on resume, dropping PNG folders that the checkpoint does not cover), and the DDP split and
gather.

It renders once before training and after every ``every_n_epochs``-th training epoch ``e`` (counted from 1),
with the same seed every time, so only the model changes between pictures. Images and scalars are logged at
``trainer.global_step`` (0 before training, the global step at the end of epoch ``e`` after it), the x axis of
Lightning's own charts, with the scalar ``epoch`` (``e``) beside them; PNG folders are named ``epoch_<e>``. The
visualised module is the LightningModule itself: its ``forward`` maps model-space images to logits.

It leaves training untouched: the engine restores train/eval flags, never writes parameter gradients and draws
its randomness from a private generator seeded identically every epoch, and the callback additionally forks the
global torch RNG around each render (the learned colour basis reads the training data through a private loader,
with the torch, Python and NumPy random states restored).

Logged (``<prefix>`` is ``featvis`` by default; ``<tag>`` is a class name, or ``<layer>.ch<c>`` /
``<layer>.neuron<c>``): TensorBoard images ``<prefix>/<tag>``, ``<prefix>/all`` and, at the end of fit,
``<prefix>/timeline`` (tags and epoch numbers in its margins); scalars ``<prefix>/target_prob``,
``<prefix>/objective``, ``<prefix>/render_seconds``, with ``metrics`` also ``robustness``, ``spectral_gap``,
``colour_distance`` and ``diversity``, with ``reference_model`` ``transfer_acc``; PNG files under
``<log_dir>/<prefix>/epoch_<NNN>/<tag>/<i>.png`` (each epoch's folder written as a whole, with a manifest) and
``timeline.png``. A resumed run first deletes the epoch folders featvis wrote that its checkpoint does not
cover (a killed run's last render), so the PNGs match the checkpoint and the logs.

The model's input space comes from ``input_convention`` (or its shortcut ``normalization_mean``/
``normalization_std``), else the datamodule's or the LightningModule's ``colour``, else plain RGB in [0, 1].
Without a ``colour`` of the run's own, images are optimised in a colour basis whitened from the training
images (:mod:`featvis.basis`, saved in checkpoints; ``learn_basis=False`` optimises per input channel) while
the model still gets its own input space. The image size comes from ``config.image_size``, the datamodule's
or module's ``image_size`` or ``example_input_array``, else 32; class names from the datamodule's
``classes``, else the module's ``class_names``, else the indices. The checkpoint state keeps the input
convention, the basis, the image size, the class names and the render settings, so ``featvis render
--model-class`` renders a checkpoint of any LightningModule as the run did.
With ``sheets``, each layer's channel sheet (rendered channels beside their top probe-set examples,
:mod:`featvis.hidden`) is logged as ``<prefix>/channels/<layer>`` and written as ``channels/<layer>.png`` in the
epoch's PNG folder, with the scalars ``<prefix>/channels/<layer>/purity`` and ``<prefix>/channels/render_seconds``.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from featvis.basis import LearnedBasis
from featvis.budget import BudgetPlan, TimeBudget, describe
from featvis.colour import ColourTransform, InputConvention, InputSpace
from featvis.engine import RenderConfig, class_names_of, device_and_dtype, fork_rng, render, resolve_layer
from featvis.engine.checks import check_bool, check_int
from featvis.hidden import ChannelSheets, SheetConfig
from featvis.outputs import RenderOutputs, WarnOnce
from featvis.scoring import RunScorer
from featvis.shards import destroy_process_group_at_exit, gather_render, shard
from featvis.targets import Target, TargetSpec, image_size_of
from featvis.timeline import Timeline

_STATE_FORMAT = 1
# A render's channel sheets: pictures by name, scalars, and the timing the time budget records.
_Sheets = tuple[dict[str, Tensor], dict[str, float], tuple[float, float, dict[str, int], int] | None]
_NO_COLOUR = (
    "FeatureVisCallback: neither the datamodule nor the LightningModule has a `colour` transform, so the model is "
    "assumed to take RGB in [0, 1]; pass normalization_mean/normalization_std (or input_convention) if its "
    "inputs are normalised."
)


class FeatureVisCallback(Callback):
    """Render feature visualisations during training and log them to every logger.

    When it renders, what it logs and where its colours, sizes and class names come from: the module docstring.

    Args:
        every_n_epochs: render at the end of every n-th training epoch (epochs counted from 1).
        targets: classes to render, as indices or class names; None renders every class (unless ``layer`` is
            set, in which case only the layer's targets are rendered).
        layer: name of a layer as in ``pl_module.named_modules()`` (e.g. ``net.group2.conv1.conv``) whose
            channels (or neurons) are rendered in addition to ``targets``.
        channels: channel indices of ``layer``; None takes the first ``min(10, channels)`` channels.
        neuron: render the centre neuron of each channel instead of the channel's mean activation.
        config: the render settings (steps, learning rate, images per target, ...); see ``RenderConfig``. With
            ``parameterisation="phase"`` the pictures keep the spectra of training images, and with
            ``fourier_scale="data"`` their mean spectrum scales the Fourier image: the datamodule's
            ``split("train")``, else the run's training dataloader's (read once, seeded).
        sheets: hidden-unit channel sheets (``SheetConfig``: layers, channels or an automatic choice of ``k``,
            top dataset examples): logged as ``<prefix>/channels/<layer>`` beside the class render; None: off.
        budget_seconds: seconds per epoch for all featvis work: steps scaled, then sheet layers skipped, to fit
            (``featvis.budget``; logged as ``<prefix>/budget/*``); too small for one render fails at once.
        normalization_mean: RGB mean of an ordinary ``(rgb - mean) / std`` input normalisation, 3 values in
            [0, 1] units; use with ``normalization_std`` for models that have no colour transform of their own.
        normalization_std: RGB standard deviation of that normalisation, 3 positive values.
        input_convention: how the model's input relates to RGB in [0, 1] when it is not a plain normalisation:
            a [0, 255] range, BGR order, a grayscale (1-channel) model or any invertible callable pair (see
            ``InputConvention``); not together with ``normalization_mean``/``normalization_std``.
        learn_basis: without a colour transform of the run's own, optimise in a colour basis whitened from the
            training images (natural colours); False optimises per input channel.
        display_scale: nearest-neighbour upsampling factor of the logged images; None picks ``128 // size``.
        render_before_training: render once before the first training epoch (step 0).
        save_png: write the PNG files and the timeline PNG.
        metrics: log quality scalars of every render (``featvis.quality``): robustness, spectral gap against
            the datamodule's training images (when it has ``split("train")``) and diversity.
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
        config: RenderConfig | None = None,
        sheets: SheetConfig | None = None,
        budget_seconds: float | None = None,
        normalization_mean: list[float] | None = None,
        normalization_std: list[float] | None = None,
        input_convention: InputConvention | None = None,
        learn_basis: bool = True,
        display_scale: int | None = None,
        render_before_training: bool = True,
        save_png: bool = True,
        metrics: bool = True,
        reference_model: str | nn.Module | None = None,
        prefix: str = "featvis",
    ) -> None:
        super().__init__()
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.spec = TargetSpec(targets, layer, channels, neuron)
        self.targets, self.layer, self.channels, self.neuron = targets, layer, channels, neuron
        self.convention = _convention(normalization_mean, normalization_std, input_convention)
        self.space: InputSpace | None = self.convention.space() if self.convention is not None else None
        self.config = config if config is not None else RenderConfig()
        self.render_before_training = check_bool("render_before_training", render_before_training)
        self.learn_basis = check_bool("learn_basis", learn_basis)
        self.prefix = prefix
        self._warn = WarnOnce()
        metrics = check_bool("metrics", metrics)
        self._scorer = RunScorer(metrics, reference_model, self.config.seed, self._warn)
        self._outputs = RenderOutputs(prefix, save_png, display_scale, self._warn)
        self._targets: list[Target] | None = None  # resolved at the first render
        self._timeline = Timeline(self._warn)  # saved in checkpoints, so a resumed run continues it
        self._basis = LearnedBasis(self._warn)  # saved in checkpoints too: a resumed run keeps its colours
        # Channel sheets: their probe set and chosen channels are saved in checkpoints too.
        self._sheets = ChannelSheets(sheets, self._warn) if sheets is not None else None
        self._budget = TimeBudget(budget_seconds)  # its measured costs are saved in checkpoints too
        self._run: dict[str, Any] = {}  # image size and class names as rendered, for `featvis render`
        self._resumed = False  # set by load_state_dict: prune the PNG folders the checkpoint does not cover

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    def state_key(self) -> str:
        keys = {
            "prefix": self.prefix,
            "targets": self.targets,
            "layer": self.layer,
            "channels": self.channels,
        }
        return self._generate_state_key(**keys, neuron=self.neuron)

    def state_dict(self) -> dict[str, Any]:
        tags = [t.tag for t in self._targets] if self._targets is not None else None
        state: dict[str, Any] = {"format": _STATE_FORMAT, "seed": self.config.seed}
        # What `featvis render --model-class` needs to render this checkpoint as the run did.
        convention = self.convention.to_state() if self.convention is not None else None
        run = {"convention": convention, "settings": self.config.plain()} | self._run
        sheets = self._sheets.state_dict() if self._sheets is not None else {}
        state |= {"render": run, "budget": self._budget.state_dict(), "every_n_epochs": self.every_n_epochs}
        return state | self._timeline.state_dict(tags) | self._basis.state_dict() | sheets

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if (found := state_dict.get("format")) != _STATE_FORMAT:
            return self._warn("state", f"FeatureVisCallback: ignoring checkpoint state of format {found}.")
        # The saved seed wins, so the resumed run draws the same noise and augmentations as before.
        self.config = self.config.replace(seed=int(state_dict["seed"]))
        self._timeline.load_state_dict(state_dict)
        self._basis.load_state_dict(state_dict)
        if self._sheets is not None:
            self._sheets.load_state_dict(state_dict)
        self._budget.load_state_dict(state_dict.get("budget", self._budget.state_dict()))
        self._resumed = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            destroy_process_group_at_exit()  # gloo's exit can abort the process after the run (featvis.shards)
        for name in (self.layer, self.config.diversity_layer):
            if name is not None:
                resolve_layer(pl_module, name)  # unknown layer -> ValueError naming the closest layers
        self._targets_for(trainer, pl_module)  # bad classes, channels or layers fail now, not after an epoch
        if self._sheets is not None:
            self._sheets.check(pl_module, self._size(trainer, pl_module))
        self._scorer.setup()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer):
            return
        if self._resumed:  # before any render: a killed run's last PNGs go
            self._resumed, log_dir = False, _log_dir(trainer)  # collective under DDP: every rank calls it
            if trainer.is_global_zero:
                self._outputs.prune(log_dir, self._timeline.epochs)
        if self._budget.active and not self._budget.measured("classes"):  # a 2-step render; all ranks join
            self._budget.calibrate("classes", lambda steps: self.render(pl_module, trainer, steps)["seconds"])
        self._budget.check(self.config.steps)  # a budget too small fails now, before training (no-op without)
        # Settings that take spectra (phase, a data scale) with no training images fail now, before training.
        size = RenderConfig(image_size=self._size(trainer, pl_module)).size
        self._scorer.spectra(self.config, trainer, pl_module, self._colour(trainer, pl_module), size)
        epoch = trainer.current_epoch
        if epoch == 0 and not self.render_before_training:
            return
        # Epoch 0: before training. Later: resumed at an epoch boundary whose render is missing.
        mid_epoch = trainer.fit_loop.epoch_loop.batch_progress.current.completed > 0
        if (epoch == 0 or self._timeline.epochs) and not mid_epoch and epoch % self.every_n_epochs == 0:
            self._maybe_render(trainer, pl_module, epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Render before ModelCheckpoint saves at the end of validation (Lightning orders it last), so the
        # checkpoint's callback state already holds this epoch and a resumed run does not repeat it.
        if self._skip(trainer) or trainer.state.fn != "fit":
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch or progress.current.ready >= trainer.num_training_batches:
            self._maybe_render(trainer, pl_module, trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip(trainer):
            self._maybe_render(trainer, pl_module, trainer.current_epoch + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer) or not self._timeline.epochs:
            return
        log_dir = _log_dir(trainer)  # collective under DDP: every rank calls it
        if trainer.is_global_zero:
            loggers, step = trainer.loggers, trainer.global_step
            self._outputs.log_timeline(loggers, log_dir, step, self._timeline)
            if self._sheets is not None:  # each layer's channels over the epochs, and their specialisation
                self._outputs.log_layer_histories(loggers, log_dir, step, self._sheets)

    def _skip(self, trainer: pl.Trainer) -> bool:
        fast_dev_run = getattr(trainer, "fast_dev_run", False)  # set by Trainer.__init__, not declared
        if fast_dev_run:
            self._warn("fast_dev_run", "FeatureVisCallback: skipped under fast_dev_run.", info=True)
        return bool(trainer.sanity_checking or fast_dev_run)

    # ------------------------------------------------------------------ rendering

    def render(
        self, pl_module: nn.Module, trainer: pl.Trainer | None = None, steps: int | None = None
    ) -> dict[str, Any]:
        """Render the targets for ``pl_module`` as it is now, logging nothing. Under DDP every rank must call it.

        Args:
            pl_module: the model (a LightningModule or any module mapping model-space images to logits).
            trainer: the trainer, for the datamodule, the ranks and the gather; None renders in this process.
            steps: optimisation steps of this render; None: the config's.

        Returns:
            A dict with ``rgb`` ``(T, K, 3, H, W)`` in [0, 1] on the CPU, ``values`` ``(T, K)``, ``probs``
            ``(T, K)`` (softmax probability of the target class, NaN for layer targets), ``names`` (one tag per
            target) and ``seconds``.
        """
        with torch.inference_mode(False), torch.no_grad(), fork_rng(pl_module):
            targets = self._targets_for(trainer, pl_module)
            config = self.config.replace(
                image_size=self._size(trainer, pl_module), steps=steps or self.config.steps
            )
            mine, per_rank = shard(targets, trainer)  # this rank's targets (all of them in one process)
            # Collective under DDP (rank 0 fits, the others take its basis): every rank calls it.
            basis = self._basis.get(trainer, pl_module, self.space) if self.learn_basis else None
            colour, objectives = self._colour(trainer, pl_module), [t.objective for t in mine]
            spectra = self._scorer.spectra(self.config, trainer, pl_module, colour, config.size)
            draw = partial(render, config=config, colour=colour, basis=basis, spectra=spectra)
            result = draw(pl_module, objectives) if mine else None
            device, k = device_and_dtype(pl_module)[0], config.images_per_target
            out = gather_render(trainer, result, per_rank, len(targets), k, config.size, device)  # every rank
            return out | {"names": [t.tag for t in targets]}

    def _maybe_render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if epoch % self.every_n_epochs or epoch in self._timeline.epochs:
            return
        # Lightning may call this under inference mode (end of validation); keep our tensors ordinary ones.
        with torch.inference_mode(False), torch.no_grad():
            start, plan = time.perf_counter(), self._plan(trainer)
            result = self.render(pl_module, trainer, plan.steps)
            log_dir = _log_dir(trainer)  # collective under DDP: every rank calls it
            self._timeline.add(epoch, result["rgb"], result["names"])
            if trainer.is_global_zero:
                rgb, tags, step = result["rgb"], result["names"], trainer.global_step
                scalars = self._scalars(result, trainer, pl_module)
                sheets, sheet_scalars, timing = self._render_sheets(trainer, pl_module, epoch, plan)
                spent = time.perf_counter() - start
                self._budget.record_epoch(plan, spent, result["seconds"], timing)
                budget = self._budget.scalars(plan, spent) if self._budget.active else {}
                scalars |= sheet_scalars | {f"{self.prefix}/{k}": v for k, v in budget.items()}
                self._outputs.log_render(trainer.loggers, log_dir, epoch, step, rgb, tags, scalars, sheets)

    def _plan(self, trainer: pl.Trainer) -> BudgetPlan:
        """This epoch's steps and sheet layers: the settings, or what fits the time budget (rank 0 decides)."""
        sheets = self._sheets
        sheet_steps = sheets.next_steps(self.config) if sheets is not None else 0
        plan = self._budget.plan(self.config.steps, sheet_steps, sheets.layers or [] if sheets else [])
        plan = trainer.strategy.broadcast(plan) if trainer.world_size > 1 else plan  # one plan for all ranks
        if plan.scale < 1 or plan.skipped:
            self._warn(f"budget:{plan}", f"FeatureVisCallback: {describe(plan)}", info=True)
        return plan

    def _render_sheets(self, trainer: pl.Trainer, module: nn.Module, epoch: int, plan: BudgetPlan) -> _Sheets:
        """This epoch's channel sheets (rank 0 only): pictures by name, scalars, the timing for the budget."""
        if self._sheets is None or not plan.layers:
            return {}, {}, None
        colour = self._colour(trainer, module)
        config = self.config.replace(image_size=self._size(trainer, module))
        if self._sheets.probe is None:  # a fixed probe set: the datamodule's split("train"), else the loader
            data = getattr(trainer, "datamodule", None)
            source = data if callable(getattr(data, "split", None)) else trainer.train_dataloader
            self._sheets.setup(module, source, colour, self.config.seed, config.size)
        basis = self._basis.transform if self.learn_basis else None
        # Steps: the budget's if it scaled them, else the sheets' own (warm, or cold when stale). Automatic
        # channel choices are kept once the model has trained (see featvis.hidden), not at step 0.
        steps, keep = plan.sheet_steps if plan.scale < 1 else None, epoch > 0
        spectra = self._scorer.spectra(self.config, trainer, module, colour, config.size)  # None if not taken
        out = self._sheets.render(
            module, colour, basis, config, spectra, keep=keep, epoch=epoch, steps=steps, layers=plan.layers
        )
        for info in out.values():
            self._warn(f"sheet:{info['tags']}", f"FeatureVisCallback: sheet of {info['tags']}", info=True)
        pictures, scalars, timing = ChannelSheets.summary(out)
        return pictures, {f"{self.prefix}/{key}": value for key, value in scalars.items()}, timing

    def _scalars(self, result: dict[str, Any], trainer: pl.Trainer, pl_module: nn.Module) -> dict[str, float]:
        """The render's scalars (rank 0 only: no collectives in here)."""
        values = {"objective": float(result["values"].nanmean()), "render_seconds": float(result["seconds"])}
        if bool(torch.isfinite(result["probs"]).any()):
            values["target_prob"] = float(result["probs"].nanmean())
        if self._scorer.active:
            classes, colour = [t.class_index for t in self._targets or []], self._colour(trainer, pl_module)
            datamodule = getattr(trainer, "datamodule", None)
            values |= self._scorer.scores(result["rgb"], classes, pl_module, colour, datamodule)
        return {f"{self.prefix}/{key}": value for key, value in values.items()}

    # ------------------------------------------------------------------ what, in which colours, at which size

    def _targets_for(self, trainer: pl.Trainer | None, pl_module: nn.Module) -> list[Target]:
        if self._targets is None:
            data, size = getattr(trainer, "datamodule", None), self._size(trainer, pl_module)
            names = class_names_of(data, pl_module)
            self._targets = self.spec.resolve(pl_module, size, names)
            self._run = {"class_names": list(names) if names else None, "image_size": size}
        return self._targets

    def _colour(self, trainer: pl.Trainer | None, pl_module: nn.Module) -> InputSpace:
        colour = self.space or ColourTransform.find(getattr(trainer, "datamodule", None), pl_module)
        if colour is None:
            self._warn("colour", _NO_COLOUR)
        return colour or ColourTransform.identity()

    def _size(self, trainer: pl.Trainer | None, pl_module: nn.Module) -> int | tuple[int, int]:
        declared = image_size_of(getattr(trainer, "datamodule", None), pl_module)
        return self.config.image_size or declared or 32


def _convention(
    mean: list[float] | None, std: list[float] | None, convention: InputConvention | None
) -> InputConvention | None:
    """The input convention the callback's arguments give: ``input_convention``, or its mean/std shortcut."""
    if (mean is None) != (std is None):
        raise ValueError("normalization_mean and normalization_std must be given together.")
    if mean is not None and convention is not None:
        raise ValueError("pass input_convention or normalization_mean/normalization_std, not both.")
    if mean is None:
        return convention
    try:
        return InputConvention(mean=mean, std=std)
    except ValueError as err:
        raise ValueError(f"normalization_mean/normalization_std: {err}") from err


def _log_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


__all__ = ["FeatureVisCallback"]
