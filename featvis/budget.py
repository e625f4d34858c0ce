"""A per-epoch time budget for all featvis work: scale render steps, then skip sheet layers, to fit it.

Pure Python and PyTorch-free arithmetic, no Lightning import. Each epoch the callback renders the class targets
(part ``"classes"``, ``steps`` steps) and, optionally, channel sheets of several layers in one batched render (parts
``"sheets:<layer>"``, ``sheet_steps`` steps). :class:`TimeBudget` keeps a measured cost per step of every part and
plans the next epoch: the full request when it fits, else both step counts scaled by one common factor, else sheet
layers dropped from the end one at a time. The class render is never dropped; at worst it runs at ``min_steps``.

Cost model (the choices, in one place):

* A render part costs ``rate * steps`` seconds, ``rate`` being its measured seconds per step. A render's fixed
  setup is folded into the rate, so a plan at fewer steps than measured slightly underestimates; the next
  epoch's measurement (at the planned steps) corrects it. Each measurement is averaged with the previous rate
  (weight ``smoothing`` for the newest) so one noisy epoch does not whipsaw the plan; a :meth:`~TimeBudget.calibrate`
  measurement is provisional and the first real one replaces it outright.
* Parts observed with ``steps=0`` are fixed costs: ``"fixed"`` / ``"fixed:<name>"`` (e.g. metrics) count every
  epoch, ``"sheets"`` (the probe forward pass of the sheets) only in epochs that render at least one sheet layer.
* A part never observed costs, when ``plan(..., images=...)`` gives its image count, the mean per-image per-step
  cost of the observed parts (sheet parts preferred for a sheet layer); otherwise it is unknown: it counts 0 s,
  is planned as requested and is listed in :attr:`BudgetPlan.unmeasured`. The first epoch then measures it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from featvis.engine.checks import check_int, check_number

#: Prefix of a sheet layer's part name: ``"sheets:net.group2"``.
SHEETS = "sheets:"
_STATE_VERSION = 1


@dataclass(frozen=True)
class BudgetPlan:
    """What one epoch renders under the budget.

    Attributes:
        steps: class render steps this epoch.
        sheet_steps: channel-sheet render steps this epoch (0 when no layer is rendered).
        layers: sheet layers rendered, in the configured order.
        skipped: sheet layers skipped to fit the budget, in the order they were dropped (last configured first).
        scale: class steps used / class steps asked (1.0 = untouched); the sheet steps use the same factor.
        estimate: predicted seconds of this plan (unmeasured parts count 0).
        budget: the budget in seconds, None without one.
        asked_steps: class render steps asked.
        asked_sheet_steps: sheet render steps asked.
        unmeasured: parts of the plan with no cost estimate yet (planned as asked).
    """

    steps: int
    sheet_steps: int
    layers: tuple[str, ...]
    skipped: tuple[str, ...]
    scale: float
    estimate: float
    budget: float | None = None
    asked_steps: int = 0
    asked_sheet_steps: int = 0
    unmeasured: tuple[str, ...] = ()

    @property
    def over_budget(self) -> bool:
        """The plan is at its minimum and still predicted to exceed the budget."""
        return self.budget is not None and self.estimate > self.budget


def describe(plan: BudgetPlan) -> str:
    """One line for an info log, e.g. ``"budget 60 s (estimate 58.1 s): steps 128 -> 64, skipped net.group2"``."""
    head = "no budget" if plan.budget is None else f"budget {plan.budget:.4g} s"
    head += f" (estimate {plan.estimate:.3g} s)"
    changes = []
    if plan.steps != plan.asked_steps:
        changes.append(f"steps {plan.asked_steps} -> {plan.steps}")
    if plan.layers and plan.sheet_steps != plan.asked_sheet_steps:
        changes.append(f"sheet steps {plan.asked_sheet_steps} -> {plan.sheet_steps}")
    if plan.skipped:
        changes.append("skipped " + ", ".join(plan.skipped))
    if not changes:
        changes.append(
            f"as asked (steps {plan.steps}" + (f", sheet steps {plan.sheet_steps})" if plan.layers else ")")
        )
    if plan.over_budget:
        changes.append("still over budget at the minimum")
    if plan.unmeasured:
        changes.append("not yet measured: " + ", ".join(plan.unmeasured))
    return f"{head}: " + ", ".join(changes)


@dataclass
class _Cost:
    """A part's smoothed cost: seconds per step (or seconds, for a fixed part) and per image and step."""

    rate: float
    image_rate: float | None = None
    images: int | None = None
    provisional: bool = False


class TimeBudget:
    """Plans each epoch's featvis work to fit ``seconds``, from measured costs of its parts.

    Args:
        seconds: the per-epoch budget (``budget_seconds``), > 0; None means no budget (:meth:`plan` returns the
            request untouched).
        min_steps: fewest steps a scaled render may get (a request below it is kept as is), >= 1.
        smoothing: weight of the newest measurement in a part's running cost, in (0, 1]; 1 keeps only the newest.

    Raises:
        ValueError: a bad argument (one line naming it and the allowed range).
    """

    def __init__(self, seconds: float | None, min_steps: int = 16, smoothing: float = 0.5) -> None:
        self._seconds = (
            None if seconds is None else check_number("budget_seconds", seconds, 0, exclusive_minimum=True)
        )
        self.min_steps = check_int("min_steps", min_steps, 1)
        self.smoothing = check_number("smoothing", smoothing, 0, 1, exclusive_minimum=True)
        self._costs: dict[str, _Cost] = {}

    @property
    def seconds(self) -> float | None:
        """The per-epoch budget in seconds, None without one."""
        return self._seconds

    @property
    def active(self) -> bool:
        """Whether there is a budget to plan for."""
        return self.seconds is not None

    # ----------------------------------------------------------------------------------------------- measuring

    def observe(
        self, part: str, seconds: float, steps: int, images: int | None = None, *, provisional: bool = False
    ) -> None:
        """Record the measured wall time of one part of an epoch.

        Args:
            part: ``"classes"``, ``"sheets:<layer>"``, or a fixed cost (``steps=0``): ``"fixed"``,
                ``"fixed:<name>"`` (every epoch) or ``"sheets"`` (only epochs that render a sheet layer).
            seconds: its wall time, >= 0.
            steps: render steps it ran (>= 1 for a render part, 0 for a fixed part).
            images: images it rendered, when known (lets unmeasured parts be estimated per image).
            provisional: a rough first estimate (:meth:`calibrate` sets it): the next measurement replaces it.

        Raises:
            ValueError: an unknown part name, or a bad number.
        """
        fixed = _is_fixed(part)
        seconds = check_number(f"seconds of {part!r}", seconds, 0)
        steps = check_int(f"steps of {part!r}", steps, 0 if fixed else 1)
        if fixed and steps != 0:
            raise ValueError(f"{part!r} is a fixed cost: observe it with steps=0, got steps={steps}.")
        if images is not None:
            images = check_int(f"images of {part!r}", images, 1)
        rate = seconds if fixed else seconds / steps
        image_rate = None if fixed or images is None else rate / images
        old = self._costs.get(part)
        if old is not None and not old.provisional:
            w = self.smoothing
            rate = w * rate + (1 - w) * old.rate
            if image_rate is not None and old.image_rate is not None:
                image_rate = w * image_rate + (1 - w) * old.image_rate
        self._costs[part] = _Cost(rate, image_rate, images, provisional)

    def observe_split(self, seconds: float, steps: int, images: Mapping[str, int]) -> None:
        """Record one batched sheet render of several layers, its time split in proportion to their images.

        Args:
            seconds: wall time of the batched render.
            steps: its steps.
            images: layer name (without the ``"sheets:"`` prefix) to the images it rendered for that layer.
        """
        if not images:
            raise ValueError("observe_split needs at least one layer in images, got none.")
        counts = {layer: check_int(f"images of layer {layer!r}", n, 1) for layer, n in images.items()}
        total = sum(counts.values())
        for layer, n in counts.items():
            self.observe(SHEETS + layer, seconds * n / total, steps, n)

    def measured(self, part: str) -> bool:
        """Whether ``part`` has a cost (measured, calibrated or restored from a checkpoint)."""
        return part in self._costs

    def record_epoch(
        self,
        plan: BudgetPlan,
        spent: float,
        classes: float,
        sheets: tuple[float, float, Mapping[str, int], int] | None = None,
    ) -> None:
        """Record one epoch's featvis work as a training callback measures it.

        Args:
            plan: the plan the epoch ran.
            spent: wall time of all featvis work of the epoch.
            classes: seconds of the class render (``plan.steps`` steps).
            sheets: for an epoch that rendered channel sheets: the seconds of the whole sheet call, those of its
                batched render (the rest is the probe pass and the warm-start check), the images rendered per
                layer and the steps the render took (a stale warm start renders cold, at more steps than
                planned); None without sheets.
        """
        self.observe("classes", classes, plan.steps)
        accounted = classes
        if sheets is not None:
            total, rendered, images, steps = sheets
            self.observe_split(rendered, steps, images)
            self.observe("sheets", max(0.0, total - rendered), 0)
            accounted += total
        # The rest (metrics, writing, gathers) is the fixed cost of every epoch.
        self.observe("fixed", max(0.0, spent - accounted), 0)

    def calibrate(
        self,
        part: str,
        run: Callable[[int], float | None],
        steps: int = 2,
        images: int | None = None,
        repeats: int = 1,
    ) -> None:
        """Time ``run(steps)`` and record it as a provisional measurement of ``part``.

        Args:
            part: as in :meth:`observe`.
            run: runs the part for the given steps and returns its own seconds, or None to use the wall time
                measured around the call.
            steps: steps to run (0 for a fixed part).
            images: images it renders, when known.
            repeats: runs to time; the fastest counts (the first run often pays one-off costs such as
                allocation or kernel selection).
        """
        check_int("repeats", repeats, 1)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            reported = run(steps)
            wall = time.perf_counter() - start
            best = min(best, wall if reported is None else reported)
        self.observe(part, best, steps, images, provisional=True)

    # ------------------------------------------------------------------------------------------------ planning

    def plan(
        self, steps: int, sheet_steps: int, layers: Sequence[str], images: Mapping[str, int] | None = None
    ) -> BudgetPlan:
        """The largest part of the request that fits the budget.

        The full request if it fits; otherwise class and sheet steps scaled by one common factor (rounded down,
        at least ``min_steps`` each, never above the request); if even ``min_steps`` does not fit, the sheet
        layers are dropped from the end one at a time and the whole plan retried. The class render is never
        dropped: at worst it runs at ``min_steps`` (``plan.over_budget`` then says so).

        Args:
            steps: class render steps asked, >= 1.
            sheet_steps: channel-sheet render steps asked, >= 0.
            layers: sheet layers asked, in the configured order.
            images: images per part this epoch (``"classes"``, ``"sheets:<layer>"``), for parts never measured.

        Returns:
            The :class:`BudgetPlan`.
        """
        steps = check_int("steps", steps, 1)
        sheet_steps = check_int("sheet_steps", sheet_steps, 0)
        layers = tuple(layers)
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must not repeat a name, got {list(layers)}.")
        images = dict(images or {})
        kept, skipped = list(layers), []
        while True:
            found = self._fit(steps, sheet_steps, tuple(kept), images)
            if found is not None or not kept:
                break
            skipped.append(kept.pop())
        if found is None:  # not even the class render alone at its minimum fits: run it at the minimum
            found = self._at(steps, sheet_steps, (), images, 0.0)
        used_steps, used_sheet, estimate, unmeasured = found
        return BudgetPlan(
            steps=used_steps,
            sheet_steps=used_sheet if kept else 0,
            layers=tuple(kept),
            skipped=tuple(skipped),
            scale=used_steps / steps,
            estimate=estimate,
            budget=self.seconds,
            asked_steps=steps,
            asked_sheet_steps=sheet_steps,
            unmeasured=unmeasured,
        )

    def _fit(
        self, steps: int, sheet_steps: int, layers: tuple[str, ...], images: dict[str, int]
    ) -> tuple[int, int, float, tuple[str, ...]] | None:
        """The plan for ``layers`` with the largest common step factor that fits, or None if none fits."""
        full = self._at(steps, sheet_steps, layers, images, 1.0)
        if self.seconds is None or full[2] <= self.seconds:
            return full
        if self._at(steps, sheet_steps, layers, images, 0.0)[2] > self.seconds:
            return None
        # The estimate never grows as the factor shrinks, so bisect for the largest factor that fits.
        low, high = 0.0, 1.0
        for _ in range(40):
            middle = (low + high) / 2
            if self._at(steps, sheet_steps, layers, images, middle)[2] <= self.seconds:
                low = middle
            else:
                high = middle
        return self._at(steps, sheet_steps, layers, images, low)

    def _at(
        self, steps: int, sheet_steps: int, layers: tuple[str, ...], images: dict[str, int], factor: float
    ) -> tuple[int, int, float, tuple[str, ...]]:
        """Class steps, sheet steps, estimate and unmeasured parts at a common step ``factor`` in [0, 1]."""
        scaled = self._scaled(steps, factor)
        scaled_sheet = self._scaled(sheet_steps, factor) if layers else 0
        unmeasured: list[str] = []
        estimate = self._fixed(bool(layers))
        for part, count in [("classes", scaled)] + [(SHEETS + layer, scaled_sheet) for layer in layers]:
            rate = self._rate(part, images.get(part))
            if rate is None:
                unmeasured.append(part)
            else:
                estimate += rate * count
        return scaled, scaled_sheet, estimate, tuple(unmeasured)

    def _scaled(self, asked: int, factor: float) -> int:
        """``asked * factor`` rounded down, but at least ``min_steps`` (or ``asked``, if that is fewer)."""
        return max(min(asked, self.min_steps), min(asked, math.floor(asked * factor + 1e-9)))

    def _fixed(self, with_sheets: bool) -> float:
        """Seconds of the fixed costs of an epoch (with the sheets' own, when a sheet layer is rendered)."""
        return sum(
            cost.rate
            for part, cost in self._costs.items()
            if _is_fixed(part) and (part != "sheets" or with_sheets)
        )

    def _rate(self, part: str, images: int | None) -> float | None:
        """Seconds per step of ``part`` (with ``images`` images), or None when it cannot be estimated."""
        cost = self._costs.get(part)
        if cost is not None:
            if images is not None and cost.image_rate is not None:
                return cost.image_rate * images
            return cost.rate
        if images is None:
            return None
        measured = [(p, c.image_rate) for p, c in self._costs.items() if c.image_rate is not None]
        alike = [r for p, r in measured if p.startswith(SHEETS) == part.startswith(SHEETS)]
        pool = alike or [r for _, r in measured]
        return sum(pool) / len(pool) * images if pool else None

    # ---------------------------------------------------------------------------------------------- reporting

    def check(self, steps: int) -> None:
        """Fail early when the budget cannot hold even the class render at its minimum steps.

        Args:
            steps: class render steps asked; the minimum is ``min(steps, min_steps)`` of them plus the fixed
                costs of every epoch.

        Raises:
            RuntimeError: no ``"classes"`` measurement yet (call :meth:`calibrate` first).
            ValueError: the budget is below the measured minimum (one line: the value, the minimum, the fix).
        """
        if self.seconds is None:
            return
        steps = check_int("steps", steps, 1)
        if "classes" not in self._costs:
            raise RuntimeError(
                "TimeBudget.check needs a 'classes' measurement: call calibrate('classes', ...) first."
            )
        fewest = min(steps, self.min_steps)
        fixed = self._fixed(False)
        minimum = self._costs["classes"].rate * fewest + fixed
        if minimum > self.seconds:
            enough = math.ceil(minimum * 10) / 10
            raise ValueError(
                f"budget_seconds={self.seconds:g} is below the measured minimum of {minimum:.3g} s per epoch "
                f"(the class render at {fewest} steps plus {fixed:.3g} s of fixed work): raise budget_seconds "
                f"to >= {enough:g}, lower the render's images_per_target or image_size, or set budget_seconds=None."
            )

    def scalars(self, plan: BudgetPlan, spent: float) -> dict[str, float]:
        """Values to log for an epoch, keys without a prefix.

        Args:
            plan: the epoch's plan.
            spent: the seconds the epoch's featvis work took.

        Returns:
            ``budget/spent``, ``budget/step_scale``, ``budget/layers_skipped`` (a count) and, with a budget,
            ``budget/seconds``.
        """
        values = {
            "budget/spent": float(spent),
            "budget/step_scale": float(plan.scale),
            "budget/layers_skipped": float(len(plan.skipped)),
        }
        if self.seconds is not None:
            values["budget/seconds"] = self.seconds
        return values

    # ---------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The measured costs per part, so a resumed run plans the same way (the budget itself is not saved)."""
        return {
            "version": _STATE_VERSION,
            "costs": {part: asdict(cost) for part, cost in self._costs.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the costs :meth:`state_dict` saved.

        Raises:
            ValueError: a state this version did not write.
        """
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION or "costs" not in state:
            raise ValueError(
                f"TimeBudget state must come from TimeBudget.state_dict() (version {_STATE_VERSION}), "
                f"got {type(state).__name__} with keys {sorted(state) if isinstance(state, Mapping) else '?'}."
            )
        costs = {}
        for part, c in state["costs"].items():
            _is_fixed(part)  # a name that is no part raises
            check_number(f"rate of {part!r}", c["rate"], 0)
            costs[part] = _Cost(**c)
        self._costs = costs


def _is_fixed(part: str) -> bool:
    """Whether ``part`` names a fixed cost; raise for a name that is no part."""
    if not isinstance(part, str):
        raise ValueError(f"part must be a name such as 'classes' or 'sheets:<layer>', got {part!r}.")
    if part in ("fixed", "sheets") or part.startswith("fixed:"):
        return True
    if part == "classes" or (part.startswith(SHEETS) and len(part) > len(SHEETS)):
        return False
    raise ValueError(
        f"part must be 'classes', 'sheets:<layer>', or a fixed cost 'fixed', 'fixed:<name>' or 'sheets', got {part!r}."
    )
