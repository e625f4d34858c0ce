"""The render-speed benchmark: its timings come from the documented renders and its floor from the bare network."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `benchmarks` is a folder of scripts, not an installed package

from benchmarks import render_speed  # noqa: E402
from featvis.model import SpeedNet  # noqa: E402


def test_model_step_seconds_times_the_bare_network_without_touching_its_gradients():
    net = SpeedNet(widths=(8, 16)).eval()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    seconds = render_speed.model_step_seconds(net, batch=4, repeats=3)
    assert 0.0 < seconds < 5.0
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(p, before[name]) for name, p in net.named_parameters())


def test_main_reports_both_renders_their_ratio_and_the_network_floor(capsys):
    result = render_speed.main(["--steps", "1", "--images-per-target", "1", "--threads", "1"])
    printed = capsys.readouterr().out
    assert result["ratio"] == result["per_target"] / result["batched"]
    assert result["model_only_ratio"] == 10 * result["model_step_single"] / result["model_step_batched"]
    assert "speed-up of batching" in printed and "the most batching can give here" in printed
    assert f"{result['ratio']:.1f}x" in printed
