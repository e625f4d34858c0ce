"""TimeBudget: plans from synthetic costs, the early check, calibration, state, and a real render inside a budget."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
import torch
from helpers import TinyClassifier

from featvis.budget import BudgetPlan, TimeBudget, describe
from featvis.engine import Channel, render


@pytest.fixture(autouse=True)
def single_thread() -> Any:
    """Tiny renders gain nothing from intra-op threads, and on a busy CPU the pool's spinning makes each step
    many times slower and its time erratic; one thread keeps the timed test steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _budget(seconds: float | None, min_steps: int = 16, fixed: float = 0.0, **rates: float) -> TimeBudget:
    """A budget with synthetic measurements: ``classes`` / ``sheets_<layer>`` seconds per step, fixed seconds."""
    budget = TimeBudget(seconds, min_steps=min_steps)
    for name, rate in rates.items():
        part = "classes" if name == "classes" else "sheets:" + name.removeprefix("sheets_")
        budget.observe(part, rate * 100, 100)
    if fixed:
        budget.observe("fixed", fixed, 0)
    return budget


def test_a_request_that_fits_is_untouched() -> None:
    budget = _budget(10.0, fixed=0.2, classes=0.01, sheets_a=0.01)
    plan = budget.plan(100, 50, ["a"])
    assert (plan.steps, plan.sheet_steps, plan.layers, plan.skipped, plan.scale) == (100, 50, ("a",), (), 1.0)
    assert plan.estimate == pytest.approx(0.2 + 1.0 + 0.5)
    assert not plan.over_budget and plan.unmeasured == ()


def test_no_budget_returns_the_request_untouched() -> None:
    budget = _budget(None, classes=1.0, sheets_a=1.0)
    plan = budget.plan(100, 50, ["a"])
    assert not budget.active
    assert (plan.steps, plan.sheet_steps, plan.layers, plan.skipped, plan.scale) == (100, 50, ("a",), (), 1.0)
    assert plan.estimate == pytest.approx(150.0)


def test_a_tight_budget_scales_both_step_counts_by_one_factor_within_the_budget() -> None:
    # Full request: 0.5 fixed + 200 * 0.01 + 100 * (0.01 + 0.01) = 4.5 s; 2.3 s leaves 1.8 s of 4.0 s of steps.
    budget = _budget(2.3, fixed=0.5, classes=0.01, sheets_a=0.01, sheets_b=0.01)
    plan = budget.plan(200, 100, ["a", "b"])
    assert plan.layers == ("a", "b") and plan.skipped == ()
    assert plan.steps == 90 and plan.sheet_steps == 45
    assert plan.scale == pytest.approx(0.45)
    assert plan.estimate <= 2.3 and plan.estimate == pytest.approx(2.3)
    assert describe(plan) == "budget 2.3 s (estimate 2.3 s): steps 200 -> 90, sheet steps 100 -> 45"


def test_scaling_never_goes_above_the_request_or_below_min_steps() -> None:
    # The sheets ask for fewer steps than min_steps: they keep them; the classes scale alone.
    budget = _budget(1.0, min_steps=16, classes=0.01, sheets_a=0.01)
    plan = budget.plan(400, 10, ["a"])
    assert plan.sheet_steps == 10 and plan.layers == ("a",)
    assert plan.steps == 90 and plan.estimate <= 1.0


def test_layers_are_skipped_from_the_end_when_min_steps_does_not_fit() -> None:
    budget = _budget(0.4, min_steps=16, classes=0.01, sheets_a=0.01, sheets_b=0.01)
    # All three at 16 steps cost 0.48 s > 0.4 s: b goes; classes and a then scale to 20 steps each.
    plan = budget.plan(100, 100, ["a", "b"])
    assert (plan.layers, plan.skipped) == (("a",), ("b",))
    assert (plan.steps, plan.sheet_steps) == (20, 20)
    # At 0.3 s, a at 16 steps does not fit either: only the class render is left, at 30 steps.
    plan = _budget(0.3, min_steps=16, classes=0.01, sheets_a=0.01, sheets_b=0.01).plan(100, 100, ["a", "b"])
    assert (plan.layers, plan.skipped, plan.steps, plan.sheet_steps) == ((), ("b", "a"), 30, 0)
    assert "skipped b, a" in describe(plan)


def test_the_class_render_is_never_skipped() -> None:
    budget = _budget(0.1, min_steps=16, classes=0.01, sheets_a=0.01)
    plan = budget.plan(100, 100, ["a"])
    assert plan.steps == 16 and plan.layers == () and plan.skipped == ("a",)
    assert plan.over_budget and plan.estimate == pytest.approx(0.16)
    assert "over budget" in describe(plan)


def test_a_sheets_fixed_cost_counts_only_when_a_sheet_layer_is_rendered() -> None:
    budget = _budget(None, classes=0.01, sheets_a=0.01)
    budget.observe("sheets", 0.5, 0)
    budget.observe("fixed:metrics", 0.25, 0)
    assert budget.plan(100, 100, ["a"]).estimate == pytest.approx(2.75)
    assert budget.plan(100, 100, []).estimate == pytest.approx(1.25)


def test_an_unmeasured_layer_is_planned_as_asked_or_estimated_per_image() -> None:
    budget = TimeBudget(1.4)
    budget.observe("classes", 1.2, 100, images=12)  # 0.001 s per image and step
    plan = budget.plan(100, 50, ["a"])
    assert plan.unmeasured == ("sheets:a",) and (plan.steps, plan.sheet_steps) == (100, 50)
    assert plan.estimate == pytest.approx(1.2)
    assert "not yet measured: sheets:a" in describe(plan)
    # With its image count the layer costs like the classes per image: 6 images * 50 steps * 0.001 s = 0.3 s,
    # 1.5 s in all, so both renders scale to fit 1.4 s.
    plan = budget.plan(100, 50, ["a"], images={"sheets:a": 6})
    assert plan.unmeasured == () and plan.steps in (93, 94)
    assert abs(plan.sheet_steps / 50 - plan.steps / 100) <= 1 / 50  # one factor, up to rounding
    assert 1.35 <= plan.estimate <= 1.4


def test_observe_split_shares_a_batched_render_by_images() -> None:
    budget = TimeBudget(None)
    budget.observe_split(1.0, 10, {"a": 2, "b": 6})
    assert budget.plan(1, 10, ["a"]).estimate == pytest.approx(0.25)
    assert budget.plan(1, 10, ["b"]).estimate == pytest.approx(0.75)


def test_one_noisy_epoch_moves_the_cost_only_halfway() -> None:
    budget = TimeBudget(None)
    budget.observe("classes", 1.0, 100)
    budget.observe("classes", 5.0, 100)
    assert budget.plan(100, 0, []).estimate == pytest.approx(3.0)


def test_check_raises_below_the_measured_minimum_and_passes_above_it() -> None:
    budget = _budget(1.0, min_steps=16, fixed=0.3, classes=0.05)  # minimum: 16 * 0.05 + 0.3 = 1.1 s
    with pytest.raises(ValueError, match=r"budget_seconds=1 is below the measured minimum of 1\.1 s") as info:
        budget.check(128)
    message = str(info.value)
    assert "\n" not in message and ">= 1.1" in message and "budget_seconds=None" in message
    budget.check(8)  # 8 steps asked: 0.4 + 0.3 s fits
    _budget(1.2, min_steps=16, fixed=0.3, classes=0.05).check(128)


def test_check_needs_a_class_measurement_unless_there_is_no_budget() -> None:
    with pytest.raises(RuntimeError, match="calibrate"):
        TimeBudget(5.0).check(64)
    TimeBudget(None).check(64)


def test_calibrate_measures_the_cost_per_step_of_a_sleeping_run() -> None:
    budget = TimeBudget(None)
    budget.calibrate("classes", lambda steps: time.sleep(0.01 * steps), steps=5)
    per_step = budget.plan(100, 0, []).estimate / 100
    assert 0.009 <= per_step <= 0.03


def test_calibrate_uses_the_reported_seconds_and_the_next_measurement_replaces_it() -> None:
    budget = TimeBudget(None)
    budget.calibrate("classes", lambda steps: 0.5, steps=2)
    assert budget.plan(10, 0, []).estimate == pytest.approx(2.5)
    budget.observe("classes", 2.0, 100)  # replaces the provisional 0.25 s/step outright
    assert budget.plan(10, 0, []).estimate == pytest.approx(0.2)


def test_state_round_trip_gives_the_same_plan() -> None:
    budget = _budget(0.4, fixed=0.05, classes=0.01, sheets_a=0.01, sheets_b=0.02)
    budget.calibrate("sheets:c", lambda steps: 0.1, steps=2)
    state = json.loads(json.dumps(budget.state_dict()))  # plain data, as a checkpoint stores it
    resumed = TimeBudget(0.4)
    resumed.load_state_dict(state)
    request: tuple[int, int, list[str]] = (100, 100, ["a", "b", "c"])
    assert resumed.plan(*request) == budget.plan(*request)
    assert budget.plan(*request).skipped  # the plan is a non-trivial one
    with pytest.raises(ValueError, match="state_dict"):
        resumed.load_state_dict({"costs": {}})


def test_scalars_report_the_plan() -> None:
    budget = _budget(0.3, classes=0.01, sheets_a=0.01, sheets_b=0.01)
    plan = budget.plan(100, 100, ["a", "b"])
    assert budget.scalars(plan, 0.29) == {
        "budget/seconds": 0.3,
        "budget/spent": 0.29,
        "budget/step_scale": 0.3,
        "budget/layers_skipped": 2.0,
    }
    assert "budget/seconds" not in TimeBudget(None).scalars(plan, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seconds": 0}, "budget_seconds"),
        ({"seconds": -5.0}, "budget_seconds"),
        ({"seconds": math.nan}, "budget_seconds"),
        ({"seconds": "60"}, "budget_seconds"),
        ({"seconds": True}, "budget_seconds"),
        ({"seconds": 60, "min_steps": 0}, "min_steps"),
        ({"seconds": 60, "min_steps": 2.5}, "min_steps"),
        ({"seconds": 60, "smoothing": 0}, "smoothing"),
    ],
)
def test_bad_constructor_values_give_one_line_errors(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name) as info:
        TimeBudget(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_observations_are_refused() -> None:
    budget = TimeBudget(None)
    with pytest.raises(ValueError, match="part must be"):
        budget.observe("class", 1.0, 10)
    with pytest.raises(ValueError, match="steps=0"):
        budget.observe("fixed", 1.0, 10)
    with pytest.raises(ValueError, match="steps of 'classes'"):
        budget.observe("classes", 1.0, 0)
    with pytest.raises(ValueError, match="repeat"):
        budget.plan(10, 10, ["a", "a"])


def test_a_real_render_planned_for_half_its_cost_stays_inside_the_budget() -> None:
    # Time is this thread's CPU time (torch runs on this one thread here): the planning is what is under test, and
    # on a loaded 2-core machine wall time swings by 2x between identical renders.
    module = TinyClassifier()
    net, colour = module.net, module.colour
    settings: dict[str, Any] = {"colour": colour, "image_size": 16, "seed": 0}
    channels = {"conv": 3, "act": 3}  # two sheet layers in one batched render, one image per channel

    def timed(*args: Any, **kwargs: Any) -> float:
        start = time.thread_time()
        render(net, *args, **settings, **kwargs)
        return time.thread_time() - start

    def classes(steps: int) -> float:
        return timed(steps=steps, images_per_target=2)

    def epoch(steps: int, sheet_steps: int, layers: tuple[str, ...], budget: TimeBudget) -> float:
        spent = classes(steps)
        budget.observe("classes", spent, steps, images=6)
        if layers:
            targets = [Channel(layer, c) for layer in layers for c in range(channels[layer])]
            seconds = timed(targets, steps=sheet_steps, images_per_target=1)
            budget.observe_split(seconds, sheet_steps, {layer: channels[layer] for layer in layers})
            spent += seconds
        return spent

    measuring = TimeBudget(None, min_steps=4)
    measuring.calibrate("classes", classes, steps=4, images=6, repeats=2)
    full = epoch(48, 48, ("conv", "act"), measuring)

    budget = TimeBudget(full / 2, min_steps=4)
    budget.load_state_dict(measuring.state_dict())
    budget.check(48)
    plan = budget.plan(48, 48, ["conv", "act"])
    assert 12 <= plan.steps < 48 and plan.layers == ("conv", "act") and plan.estimate <= full / 2
    spent = epoch(plan.steps, plan.sheet_steps, plan.layers, budget)
    assert spent < 1.5 * full / 2, (full, spent, describe(plan))

    tight = TimeBudget(full / 1000, min_steps=16)
    tight.load_state_dict(budget.state_dict())
    with pytest.raises(ValueError, match="below the measured minimum"):
        tight.check(48)


def test_plan_is_a_frozen_value() -> None:
    plan = TimeBudget(None).plan(10, 0, [])
    assert isinstance(plan, BudgetPlan)
    with pytest.raises(AttributeError):
        plan.steps = 3  # type: ignore[misc]
