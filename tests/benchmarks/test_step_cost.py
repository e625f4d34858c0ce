"""The step-cost benchmark: widths side by side, the default config's widths by default, bad values refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import benchmarks.step_cost as step_cost
from benchmarks.common import REPO, load_config


def test_default_widths_are_the_default_config_and_the_speedrun_overlay(
    capsys: pytest.CaptureFixture,
) -> None:
    result = step_cost.main(["--batch-size", "2", "--rounds", "1", "--device", "cpu"])
    default = load_config(REPO / "configs" / "cifar10.yaml")["model"]["widths"]
    speedrun = load_config(REPO / "configs" / "cifar10_speedrun.yaml")["model"]["widths"]
    assert [row["widths"] for row in result["rows"]] == [default, speedrun]
    assert result["epochs"] == load_config(REPO / "configs" / "cifar10.yaml")["trainer"]["max_epochs"]
    # The airbench94 net's 0.708 GFLOP per training image (benchmarks/README.md), the default's wider net more.
    assert result["rows"][1]["gflop_per_image"] == pytest.approx(0.708, abs=0.001)
    assert result["rows"][0]["gflop_per_image"] > 1.5 * result["rows"][1]["gflop_per_image"]
    assert "| 64/256/256 | 0.708 |" in capsys.readouterr().out


def test_a_sixteen_times_wider_net_costs_more_per_step_and_the_first_row_is_the_unit(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = step_cost.main(
            [
                "--widths", "4", "8", "8", "--widths", "64", "128", "128", "--batch-size", "16", "--rounds", "3",
                "--epochs", "2", "--device", "cpu", "--json", str(tmp_path / "cost.json"),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    narrow, wide = result["rows"]
    assert narrow["relative"] == 1.0 and wide["relative"] > 2.0
    assert wide["seconds_per_step"] > narrow["seconds_per_step"] > 0
    assert json.loads((tmp_path / "cost.json").read_text())["rows"][1]["widths"] == [64, 128, 128]


def test_bad_values_are_refused_before_timing() -> None:
    with pytest.raises(ValueError, match="--epochs must be >= 1, got 0"):
        step_cost.main(["--epochs", "0"])
    with pytest.raises(ValueError, match="rounds >= 1"):
        step_cost.step_seconds([[4, 8, 8]], 2, torch.device("cpu"), rounds=0)
