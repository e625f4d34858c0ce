"""featvis.outputs: PNG files, TensorBoard images, scalars for every logger, the timeline and its state."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers import read_events
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from featvis import images as img
from featvis.outputs import RenderOutputs, Timeline, WarnOnce


def _rgb(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_render_goes_to_pngs_tensorboard_and_every_loggers_scalars(tmp_path: Path) -> None:
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv = CSVLogger(str(tmp_path), name="csv", version=0)
    outputs = RenderOutputs("fv", save_png=True, display_scale=None, warn=WarnOnce())
    rgb = _rgb()
    with pytest.warns(UserWarning, match="TensorBoard only") as record:
        for step in (0, 1):
            outputs.log_render(
                [tb, csv], tmp_path / "run", step, rgb, ["a", "b"], {"fv/objective": 1.5 + step}
            )
    assert sum("TensorBoard only" in str(w.message) for w in record) == 1  # once, not per render
    png = img.load_png(tmp_path / "run" / "fv" / "epoch_001" / "b" / "2.png")
    assert torch.equal(png, (rgb[1, 2] * 255).round() / 255)  # native size, the pixels as rendered
    events = read_events(tmp_path / "tb")
    assert set(events["images"]) == {"fv/a", "fv/b", "fv/all"}
    assert events["images"]["fv/a"] == [(0, 3 * 8 * 16 + 8, 8 * 16 + 4), (1, 3 * 8 * 16 + 8, 8 * 16 + 4)]
    assert events["scalars"]["fv/objective"] == [0, 1]
    csv.save()
    assert "fv/objective" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()


def test_timeline_orders_epochs_and_restarts_for_other_targets(tmp_path: Path) -> None:
    warn = WarnOnce()
    timeline = Timeline(warn)
    for epoch, seed in ((2, 2), (0, 0), (1, 1)):
        timeline.add(epoch, _rgb(seed), ["a", "b"])
    outputs = RenderOutputs("fv", save_png=True, display_scale=1, warn=warn)
    outputs.log_timeline([], tmp_path, timeline.epochs, torch.stack(timeline.thumbs))
    picture = img.load_png(tmp_path / "fv" / "timeline.png")
    assert picture.shape == (3, 2 * 8 + 6, 3 * 8 + 8)
    for column, seed in enumerate((0, 1, 2)):  # epochs in ascending order, whatever the order rendered
        left = 2 + column * 10
        assert torch.equal(picture[:, 12:20, left : left + 8], (_rgb(seed)[1, 0] * 255).round() / 255)

    resumed = Timeline(warn)
    resumed.load_state_dict(timeline.state_dict(["a", "b"]))
    resumed.add(3, _rgb(3), ["a", "b"])
    assert resumed.epochs == [2, 0, 1, 3]
    other = Timeline(WarnOnce())
    other.load_state_dict(timeline.state_dict(["a", "b"]))
    with pytest.warns(UserWarning, match="timeline restarts"):
        other.add(3, _rgb(3), ["a", "c"])
    assert other.epochs == [3] and len(other.thumbs) == 1


def test_no_png_and_bad_settings(tmp_path: Path) -> None:
    outputs = RenderOutputs("fv", save_png=False, display_scale=3, warn=WarnOnce())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs.log_render([], tmp_path, 0, _rgb(), ["a", "b"], {})
    assert list(tmp_path.iterdir()) == [] and outputs.scale(8) == 3
    for kwargs, message in (({"prefix": "a/b"}, "prefix"), ({"display_scale": 0}, "display_scale")):
        with pytest.raises(ValueError, match=message):
            RenderOutputs(
                **{"prefix": "fv", "save_png": True, "display_scale": None, "warn": WarnOnce(), **kwargs}
            )
