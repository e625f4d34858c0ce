"""The render-speed benchmark: it times what it claims (one batched render vs one call per target) on a tiny net."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyClassifier

import benchmarks.render_speed as render_speed
from featvis.engine import RenderConfig, resolve_autocast
from featvis.networks import SpeedNet


def test_model_step_seconds_times_the_bare_network_without_touching_its_gradients():
    net = SpeedNet(widths=(8, 16)).eval()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    seconds = render_speed.model_step_seconds(net, batch=4, repeats=3)
    assert 0.0 < seconds < 5.0
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(p, before[name]) for name, p in net.named_parameters())


@pytest.mark.parametrize("autocast", ["auto", "none", "bf16"])
def test_model_step_seconds_runs_at_the_renders_precision(autocast):
    net = SpeedNet(widths=(8, 16)).eval()
    dtypes: list[torch.dtype] = []
    net.head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    render_speed.model_step_seconds(net, batch=2, repeats=1, autocast=autocast, size=(16, 16))
    expected = resolve_autocast(autocast, torch.device("cpu"), torch.float32) or torch.float32
    assert dtypes == [expected] * 4  # three untimed passes and one timed one


def test_time_renders_batches_every_class_and_then_renders_each_class_alone():
    classes, per_target, steps, repeats = 10, 2, 3, 3
    model = TinyClassifier(num_classes=classes).eval()
    batch_sizes: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: batch_sizes.append(inputs[0].shape[0]))
    config = RenderConfig(steps=steps, images_per_target=per_target, image_size=8)

    timing = render_speed.time_renders(model, config, repeats=repeats)

    assert timing["targets"] == classes and timing["images"] == classes * per_target
    assert timing["result"].rgb.shape == (classes, per_target, 3, 8, 8)
    assert [t.index for t in timing["result"].targets] == list(range(classes))
    # What the model saw: optimisation steps on all classes at once, and on one class at a time, with the
    # configured number of steps each time (a render also runs a probe and a final pass, hence "at least").
    full, single = classes * per_target, per_target
    assert set(batch_sizes) <= {1, single, full}
    assert batch_sizes.count(full) >= repeats * steps
    assert batch_sizes.count(single) >= repeats * classes * steps
    assert batch_sizes.count(single) < repeats * classes * (steps + 3)  # one target per call, not all of them
    # Both ways took time, and for a tiny network the nine extra calls per repeat dominate: batching wins.
    assert timing["batched"] > 0 and timing["per_target"] > 0
    assert timing["ratio"] == pytest.approx(timing["per_target"] / timing["batched"])
    assert timing["ratio"] > 1.0


def test_time_renders_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        render_speed.time_renders(TinyClassifier(), RenderConfig(steps=1), repeats=0)


def test_main_reports_counts_it_was_given(capsys):
    result = render_speed.main(["--steps", "1", "--images-per-target", "1", "--threads", "1"])
    printed = capsys.readouterr().out
    assert result["targets"] == 10 and result["images"] == 10 and result["steps"] == 1
    assert "1 steps; 10 images; " in printed and "(10 calls)" in printed
    assert result["batched"] > 0 and result["per_target"] > 0 and result["model_step_single"] > 0
    assert f"speed-up of batching: {result['ratio']:.1f}x" in printed
