"""featvis.outputs: PNG files, TensorBoard images, scalars for every logger, the timeline and its state."""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import read_events, read_scalars
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from featvis import images as img
from featvis.folders import MANIFEST_NAME
from featvis.outputs import RenderOutputs, WarnOnce
from featvis.timeline import Timeline


def _rgb(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_render_goes_to_pngs_tensorboard_and_every_loggers_scalars(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning's logger stops propagation when the root logger has no handler yet; let caplog see its records.
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv = CSVLogger(str(tmp_path), name="csv", version=0)
    outputs = RenderOutputs("fv", save_png=True, display_scale=None, warn=WarnOnce())
    rgb = _rgb()
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("error")  # a CSVLogger is a choice, not a problem: no warning
        for epoch, step in ((0, 0), (1, 7)):  # epoch 1 ended at global step 7
            outputs.log_render(
                [tb, csv], tmp_path / "run", epoch, step, rgb, ["a", "b"], {"fv/objective": 1.5 + epoch}
            )
    infos = [r.getMessage() for r in caplog.records if "cannot show images" in r.getMessage()]
    assert set(infos) == {  # once, not per render (pytest may hand one record to two handlers)
        f"FeatureVisCallback: CSVLogger cannot show images; they are written as PNG files under {tmp_path / 'run' / 'fv'}/."
    }
    png = img.load_png(tmp_path / "run" / "fv" / "epoch_001" / "b" / "2.png")  # folders named by epoch
    assert torch.equal(png, (rgb[1, 2] * 255).round() / 255)  # native size, the pixels as rendered
    events = read_events(tmp_path / "tb")
    assert set(events["images"]) == {"fv/a", "fv/b", "fv/all"}
    assert events["images"]["fv/a"] == [(0, 3 * 8 * 16 + 8, 8 * 16 + 4), (7, 3 * 8 * 16 + 8, 8 * 16 + 4)]
    assert events["scalars"]["fv/objective"] == [0, 7]  # at the step, like Lightning's own scalars
    assert read_scalars(tmp_path / "tb", "epoch") == [(0, 0.0), (7, 1.0)]  # the epoch beside them
    csv.save()
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, row.split(","), strict=True)) for row in rows[1:]]
    assert [(r["step"], r["epoch"], r["fv/objective"]) for r in values] == [
        ("0", "0", "1.5"),
        ("7", "1", "2.5"),
    ]


class _DiskFullWriter(SummaryWriter):
    """A real event-file writer whose disk fills up for images once ``full`` is set."""

    full = False

    def add_image(self, *args: Any, **kwargs: Any) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        super().add_image(*args, **kwargs)


class DiskFullTensorBoardLogger(TensorBoardLogger):
    """A TensorBoardLogger that writes through :class:`_DiskFullWriter`."""

    @property
    def experiment(self) -> _DiskFullWriter:
        if self._experiment is None:
            self._experiment = _DiskFullWriter(log_dir=self.log_dir)
        return self._experiment


def test_a_logger_that_rejects_images_loses_nothing_logged_and_stops_nothing(tmp_path: Path) -> None:
    failing = DiskFullTensorBoardLogger(str(tmp_path), name="failing", version=0)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv = CSVLogger(str(tmp_path), name="csv", version=0)
    outputs = RenderOutputs("fv", save_png=True, display_scale=1, warn=WarnOnce())
    timeline = Timeline(WarnOnce())
    outputs.log_render([failing, tb, csv], tmp_path / "run", 0, 0, _rgb(0), ["a", "b"], {"fv/objective": 1.0})
    timeline.add(0, _rgb(0), ["a", "b"])
    failing.experiment.full = True
    with pytest.warns(UserWarning, match="DiskFullTensorBoardLogger rejected") as record:
        for epoch in (1, 2):
            outputs.log_render(
                [failing, tb, csv],
                tmp_path / "run",
                epoch,
                5 * epoch,
                _rgb(epoch),
                ["a", "b"],
                {"fv/objective": 2.0},
            )
            timeline.add(epoch, _rgb(epoch), ["a", "b"])
        outputs.log_timeline([failing, tb, csv], tmp_path / "run", 10, timeline)
    assert [str(w.message) for w in record] == [  # once for three rejected calls; names the error and the fix
        "FeatureVisCallback: DiskFullTensorBoardLogger rejected the image 'fv/a' (OSError: [Errno 28] No space "
        "left on device); it still gets the scalars, the other loggers the images, and the PNG files go under "
        f"{tmp_path / 'run' / 'fv'}/. To fix: check that its log folder is writable and upgrade tensorboard "
        "(pip install -U tensorboard)."
    ]
    failed = read_events(tmp_path / "failing")
    assert {tag: [e[0] for e in events] for tag, events in failed["images"].items()} == {
        "fv/a": [0],
        "fv/b": [0],
        "fv/all": [0],
    }
    assert failed["scalars"]["fv/objective"] == [0, 5, 10]  # kept, and it still gets the scalars
    ok = read_events(tmp_path / "tb")["images"]
    assert {tag: [e[0] for e in events] for tag, events in ok.items()} == {
        "fv/a": [0, 5, 10],
        "fv/b": [0, 5, 10],
        "fv/all": [0, 5, 10],
        "fv/timeline": [10],
    }
    assert sorted(p.name for p in (tmp_path / "run" / "fv").iterdir()) == [
        "epoch_000",
        "epoch_001",
        "epoch_002",
        "timeline.png",
    ]


def test_timeline_orders_epochs_and_restarts_for_other_targets(tmp_path: Path) -> None:
    warn = WarnOnce()
    timeline = Timeline(warn)
    for epoch, seed in ((2, 2), (0, 0), (1, 1)):
        timeline.add(epoch, _rgb(seed), ["a", "b"])
    outputs = RenderOutputs("fv", save_png=True, display_scale=1, warn=warn)
    outputs.log_timeline([], tmp_path, 9, timeline)
    picture = img.load_png(tmp_path / "fv" / "timeline.png")
    # The tiles sit in the bottom-right corner, below the epoch numbers and right of the target tags.
    top, left = picture.shape[1] - (2 * 8 + 6), picture.shape[2] - (3 * 8 + 8)
    assert top > 0 and left > 0
    for column, seed in enumerate((0, 1, 2)):  # epochs in ascending order, whatever the order rendered
        x = left + 2 + column * 10
        assert torch.equal(picture[:, top + 12 : top + 20, x : x + 8], (_rgb(seed)[1, 0] * 255).round() / 255)
    tiles = torch.stack([(_rgb(seed)[:, 0] * 255).round() / 255 for seed in (0, 1, 2)], dim=1)
    labelled = img.labelled_grid(tiles, ["a", "b"], ["0", "1", "2"], 1, 2, corner="epoch")  # tags, epochs
    assert torch.equal(img.to_uint8(picture), img.to_uint8(labelled))

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
        outputs.log_render([], tmp_path, 0, 0, _rgb(), ["a", "b"], {})
    assert list(tmp_path.iterdir()) == [] and outputs.scale(8) == 3
    for kwargs, message in (({"prefix": "a/b"}, "prefix"), ({"display_scale": 0}, "display_scale")):
        with pytest.raises(ValueError, match=message):
            RenderOutputs(
                **{"prefix": "fv", "save_png": True, "display_scale": None, "warn": WarnOnce(), **kwargs}
            )


def test_timeline_logs_at_the_given_step_and_says_where_the_pngs_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning's logger stops propagation when the root logger has no handler yet; let caplog see its records.
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    timeline = Timeline(WarnOnce())
    for epoch in (0, 1):
        timeline.add(epoch, _rgb(epoch), ["a", "b"])
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    outputs = RenderOutputs("fv", save_png=True, display_scale=None, warn=WarnOnce())
    with caplog.at_level(logging.INFO):
        outputs.log_timeline([tb], tmp_path / "run", 14, timeline)
    message = f"featvis: PNGs under {tmp_path / 'run' / 'fv'}/epoch_*/, timeline {tmp_path / 'run' / 'fv' / 'timeline.png'}"
    assert {r.getMessage() for r in caplog.records} == {
        message
    }  # (pytest may hand one record to two handlers)
    assert [e[0] for e in read_events(tmp_path / "tb")["images"]["fv/timeline"]] == [14]
    caplog.clear()
    RenderOutputs("fv", save_png=False, display_scale=None, warn=WarnOnce()).log_timeline(
        [], tmp_path, 1, timeline
    )
    assert caplog.records == []  # no PNGs, nothing to point at


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_epoch_folder_is_written_as_a_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = RenderOutputs("fv", save_png=True, display_scale=None, warn=WarnOnce())
    outputs.log_render([], tmp_path, 0, 0, _rgb(0), ["a", "b"], {})
    manifest = (tmp_path / "fv" / "epoch_000" / MANIFEST_NAME).read_text()
    assert '"a/0.png"' in manifest and '"b/2.png"' in manifest  # featvis's own folder, so prune may delete it
    # Interrupted after the first file of epoch 1 (a full disk, an exception; a kill -9 leaves the staging folder):
    # no epoch_001 that looks complete.
    save_png, calls = img.save_png, []

    def failing(rgb: torch.Tensor, path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        save_png(rgb, path)

    monkeypatch.setattr(img, "save_png", failing)
    with pytest.raises(OSError, match="disk full"):
        outputs.log_render([], tmp_path, 1, 5, _rgb(1), ["a", "b"], {})
    assert sorted(p.name for p in (tmp_path / "fv").iterdir()) == ["epoch_000"]
    assert calls[0].parent.parent.name.startswith(
        ".epoch_001.partial-"
    )  # written into a hidden staging folder
    # Rendering an epoch again replaces the whole folder: no file of the earlier render survives.
    monkeypatch.setattr(img, "save_png", save_png)
    outputs.log_render([], tmp_path, 0, 0, _rgb(2)[:1], ["c"], {})
    assert sorted(_tree(tmp_path / "fv" / "epoch_000")) == [MANIFEST_NAME, "c/0.png", "c/1.png", "c/2.png"]
    # A folder of that name that featvis did not write is left alone: a warning, no PNGs, training goes on.
    mine = tmp_path / "fv" / "epoch_004"
    (mine / "a").mkdir(parents=True)
    (mine / "a" / "0.png").write_bytes(b"mine")
    with pytest.warns(UserWarning, match="PNGs not written: .*epoch_004 was not written by featvis"):
        outputs.log_render([], tmp_path, 4, 9, _rgb(4), ["a", "b"], {})
    assert _tree(mine) == {"a/0.png": b"mine"}


def test_prune_deletes_only_featvis_folders_the_checkpoint_does_not_cover(tmp_path: Path) -> None:
    outputs = RenderOutputs("fv", save_png=True, display_scale=None, warn=WarnOnce())
    for epoch in range(4):
        outputs.log_render([], tmp_path, epoch, 3 * epoch, _rgb(epoch), ["a", "b"], {})
    root = tmp_path / "fv"
    kept = {name: _tree(root / name) for name in ("epoch_000", "epoch_002")}
    (root / "epoch_005" / "a").mkdir(parents=True)  # not written by featvis: no manifest
    (root / "epoch_005" / "a" / "0.png").write_bytes(b"mine")
    (root / "epoch_003" / "notes.txt").write_text("mine too")  # a file featvis did not write
    stale = (
        root / ".epoch_004.partial-999999999-0a1b"
    )  # a killed write's staging folder (its process is gone)
    (stale / "a").mkdir(parents=True)
    (stale / "a" / "0.png").write_bytes(b"half")
    (root / "timeline.png").write_bytes(b"timeline")
    with pytest.warns(UserWarning, match="kept") as record:
        outputs.prune(tmp_path, [0, 2])
    assert sorted(p.name for p in root.iterdir()) == [
        "epoch_000",
        "epoch_002",
        "epoch_003",
        "epoch_005",
        "timeline.png",
    ]
    assert {name: _tree(root / name) for name in ("epoch_000", "epoch_002")} == kept  # covered: untouched
    assert _tree(root / "epoch_003") == {"notes.txt": b"mine too"}  # only what featvis wrote is gone
    assert _tree(root / "epoch_005") == {"a/0.png": b"mine"}
    assert len(record) == 2 and all(str(root) in str(w.message) for w in record)
    outputs.prune(tmp_path / "nowhere", [0])  # no PNG folder yet: nothing to do
    assert os.listdir(tmp_path) == ["fv"]


def _tensorboard_images(log_dir: Path, tag: str) -> list[tuple[int, torch.Tensor]]:
    """``(step, picture)`` of every image event of ``tag`` below ``log_dir``, the picture decoded to (3, H, W)."""
    found = []
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={IMAGES: 0})
        acc.Reload()
        if tag in acc.Tags()["images"]:
            for event in acc.Images(tag):
                with Image.open(io.BytesIO(event.encoded_image_string)) as image:
                    pixels = torch.tensor(np.asarray(image.convert("RGB")))
                found.append((event.step, pixels.permute(2, 0, 1).float() / 255))
    return found


def test_log_picture_goes_to_tensorboard_and_a_nested_png(tmp_path: Path) -> None:
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    outputs = RenderOutputs("fv", save_png=True, display_scale=None, warn=WarnOnce())
    picture = torch.rand(3, 10, 14, generator=torch.Generator().manual_seed(5))
    stored = (picture * 255).round() / 255  # what 8 bits keep
    path = outputs.log_picture([tb], tmp_path / "run", 12, "channels/net.group3/purity", picture, "caption")
    assert path == tmp_path / "run" / "fv" / "channels" / "net.group3" / "purity.png"
    assert torch.equal(img.load_png(path), stored)
    [(step, shown)] = _tensorboard_images(tmp_path / "tb", "fv/channels/net.group3/purity")
    assert step == 12 and float((shown - picture).abs().max()) <= 1 / 255  # TensorBoard floors, not rounds

    quiet = RenderOutputs("fv", save_png=False, display_scale=None, warn=WarnOnce())
    assert quiet.log_picture([], tmp_path / "none", 0, "x", picture, "") is None
    assert not (tmp_path / "none").exists()
    for name in ("../x", "a//b", "", "a/", "a b"):  # the file must stay inside <log_dir>/<prefix>/
        with pytest.raises(ValueError, match="joined by '/'"):
            outputs.log_picture([tb], tmp_path / "run", 0, name, picture, "")


def test_timeline_under_another_name_and_corner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    timeline = Timeline(WarnOnce())
    for epoch in (0, 3):
        timeline.add(epoch, _rgb(epoch), ["net.conv.ch1", "net.conv.ch4"])
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    outputs = RenderOutputs("fv", save_png=True, display_scale=1, warn=WarnOnce())
    with caplog.at_level(logging.INFO):
        outputs.log_timeline(
            [tb], tmp_path / "run", 8, timeline, name="channels/net.conv/timeline", corner="ch"
        )
    path = tmp_path / "run" / "fv" / "channels" / "net.conv" / "timeline.png"
    tiles = torch.stack([(_rgb(seed)[:, 0] * 255).round() / 255 for seed in (0, 3)], dim=1)
    expected = img.labelled_grid(tiles, ["net.conv.ch1", "net.conv.ch4"], ["0", "3"], 1, 2, corner="ch")
    assert torch.equal(img.to_uint8(img.load_png(path)), img.to_uint8(expected))
    assert not (tmp_path / "run" / "fv" / "timeline.png").exists()  # the default timeline is not touched
    [(step, shown)] = _tensorboard_images(tmp_path / "tb", "fv/channels/net.conv/timeline")
    assert step == 8 and float((shown - expected).abs().max()) <= 1 / 255
    assert {r.getMessage() for r in caplog.records} == {
        f"featvis: PNGs under {tmp_path / 'run' / 'fv'}/epoch_*/, timeline {path}"
    }
