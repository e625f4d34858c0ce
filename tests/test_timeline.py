"""featvis.timeline: the histories over epochs (pictures, purity) keep one row per tag, in epoch order, across resumes."""

from __future__ import annotations

import warnings

import pytest
import torch

from featvis.timeline import LayerHistory, PurityHistory, Timeline, UserWarnOnce


def _rgb(seed: int, targets: int = 2, size: int = 4) -> torch.Tensor:
    return torch.rand(targets, 2, 3, size, size, generator=torch.Generator().manual_seed(seed))


class _Recorder:
    """A ``warn(key, message)`` that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, key: str, message: str) -> None:
        self.calls.append((key, message))


def _thumb(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb[:, 0] * 255).round() / 255


def test_timeline_replaces_an_epoch_rendered_again_and_restarts_when_its_targets_change() -> None:
    warn = _Recorder()
    timeline = Timeline(warn)
    timeline.add(0, _rgb(0), ["a", "b"])
    timeline.add(1, _rgb(1), ["a", "b"])
    timeline.add(0, _rgb(2), ["a", "b"])  # epoch 0 again: the newer render replaces it
    epochs, tags, tiles = timeline.columns()
    assert epochs == [0, 1] and tags == ["a", "b"] and warn.calls == []
    assert torch.allclose(tiles[:, 0], _thumb(_rgb(2)), atol=1e-6)
    assert torch.allclose(tiles[:, 1], _thumb(_rgb(1)), atol=1e-6)

    timeline.add(2, _rgb(3), ["a", "c"])  # other targets within the run: rows cannot be mixed
    assert timeline.columns()[0] == [2] and timeline.columns()[1] == ["a", "c"]
    assert warn.calls[-1][0] == "timeline_changed" and "restarts at epoch 2" in warn.calls[-1][1]
    timeline.add(3, _rgb(4, size=6), ["a", "c"])  # another image size too
    epochs, _, tiles = timeline.columns()
    assert epochs == [3] and tiles.shape == (2, 1, 3, 6, 6) and len(warn.calls) == 2


def test_purity_history_orders_epochs_round_trips_and_restarts_for_other_channels() -> None:
    warn = _Recorder()
    history = PurityHistory(warn)
    assert history.columns()[0] == [] and history.columns()[1].shape == (0, 0)
    history.add(2, torch.tensor([0.5, 1.0]), ["l.ch1", "l.ch4"])
    history.add(0, torch.tensor([0.25, 0.5]), ["l.ch1", "l.ch4"])
    history.add(1, torch.tensor([0.75, float("nan")]), ["l.ch1", "l.ch4"])
    history.add(2, torch.tensor([1.0, 1.0]), ["l.ch1", "l.ch4"])  # replaces epoch 2
    epochs, purity, tags = history.columns()
    assert epochs == [0, 1, 2] and tags == ["l.ch1", "l.ch4"]
    expected = torch.tensor([[0.25, 0.5], [0.75, float("nan")], [1.0, 1.0]])
    assert torch.equal(purity.isnan(), expected.isnan())
    assert torch.equal(purity.nan_to_num(-1), expected.nan_to_num(-1))

    restored = PurityHistory(warn)
    restored.load_state_dict(history.state_dict())
    assert restored.columns()[0] == epochs and restored.columns()[2] == tags
    assert torch.equal(restored.columns()[1].nan_to_num(-1), expected.nan_to_num(-1))
    restored.add(3, torch.tensor([0.5, 0.5]), ["l.ch1", "l.ch4"])
    assert restored.columns()[0] == [0, 1, 2, 3] and warn.calls == []

    restored.add(4, torch.tensor([1.0]), ["l.ch2"])  # other channels: a fresh curve
    assert restored.columns()[0] == [4] and restored.columns()[2] == ["l.ch2"]
    assert warn.calls[0][0] == "purity_changed" and "restarts at epoch 4" in warn.calls[0][1]
    with pytest.raises(ValueError, match=r"purity has shape \(3,\) but 1 channel tags were given"):
        restored.add(5, torch.ones(3), ["l.ch2"])
    empty = PurityHistory(warn)
    empty.load_state_dict(PurityHistory(warn).state_dict())
    assert empty.columns()[0] == []


def test_layer_history_keeps_one_of_each_per_layer_and_names_the_layer_in_warnings() -> None:
    warn = _Recorder()
    history = LayerHistory(warn)
    history.add("conv", 0, _rgb(0), torch.tensor([1.0, 0.5]), ["conv.ch0", "conv.ch1"])
    history.add("fc", 0, _rgb(1, targets=1), torch.tensor([0.25]), ["fc.ch3"])
    history.add("conv", 1, _rgb(2), torch.tensor([0.5, 0.5]), ["conv.ch0", "conv.ch1"])
    state = history.state_dict()
    assert set(state) == set(LayerHistory.KEYS)
    restored = LayerHistory(warn)
    restored.load_state_dict(state)
    assert list(restored.timelines) == ["conv", "fc"] and list(restored.purity) == ["conv", "fc"]
    epochs, tags, tiles = restored.timelines["conv"].columns()
    assert epochs == [0, 1] and tags == ["conv.ch0", "conv.ch1"]
    assert torch.allclose(tiles[:, 1], _thumb(_rgb(2)), atol=1e-6)
    assert torch.equal(restored.purity["fc"].columns()[1], torch.tensor([[0.25]]))

    restored.add("fc", 1, _rgb(3, targets=1), torch.tensor([0.5]), ["fc.ch5"])
    keys = [key for key, _ in warn.calls]
    assert keys == ["fc:timeline", "fc:purity_changed"]  # a checkpoint's timeline, then the curve, of fc only
    assert all(message.endswith("(layer fc)") for _, message in warn.calls)
    restored.load_state_dict({})
    assert restored.timelines == {} and restored.purity == {}


def test_user_warn_once_warns_once_per_key() -> None:
    warn = UserWarnOnce()
    with pytest.warns(UserWarning) as record:
        warn("a", "first")
        warn("a", "again")
        warn("b", "other")
    assert [str(w.message) for w in record] == ["first", "other"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn("b", "silent")
