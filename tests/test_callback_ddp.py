"""FeatureVisCallback under DDP (two CPU processes, gloo): targets split across ranks, logged once by rank 0."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import CLASSES, FAST, SIZE, TinyClassifier, make_trainer, read_events

from featvis import images as img
from featvis.callback import FeatureVisCallback
from featvis.hidden import SheetConfig


def test_ddp_spawn_logs_every_epoch_once(tmp_path):
    # 4 targets over 2 ranks would split evenly; 3 classes + 2 channels = 5 targets leaves rank 1 a padded shard.
    # The class callback also draws a channel sheet: rendered on rank 0 only, logged once per epoch.
    sheets = SheetConfig(layers=["net.conv"], k=2, examples=2, probe_size=16)
    classes = FeatureVisCallback(config=FAST, sheets=sheets)
    channels = FeatureVisCallback(layer="net.conv", channels=[0, 1], prefix="chan", config=FAST)
    trainer = make_trainer(
        tmp_path, [classes, channels], epochs=2, devices=2, strategy="ddp_spawn", enable_checkpointing=False
    )
    model = TinyClassifier(shuffle=False)
    trainer.fit(model)
    # Each rank trains on half the samples in batches of 16: the global step at the end of epoch e is e * batches.
    batches = -(-(model.samples // 2) // 16)
    steps = [epoch * batches for epoch in range(3)]
    log_dir = tmp_path / "run" / "version_0"
    events = read_events(log_dir)
    expected = {f"featvis/{name}" for name in CLASSES} | {"featvis/all", "featvis/timeline"}
    expected |= {f"featvis/channels/net.conv{name}" for name in ("", "/timeline", "/specialisation")}
    expected |= {"chan/net.conv.ch0", "chan/net.conv.ch1", "chan/all", "chan/timeline"}
    assert set(events["images"]) == expected
    for tag, entries in events["images"].items():
        once = tag.endswith(("timeline", "specialisation"))  # at the end of fit
        assert sorted(e[0] for e in entries) == ([steps[-1]] if once else steps), tag
    assert sorted(events["scalars"]["featvis/target_prob"]) == steps
    assert sorted(events["scalars"]["featvis/channels/net.conv/purity"]) == steps
    for prefix, names in (("featvis", CLASSES), ("chan", ["net.conv.ch0", "net.conv.ch1"])):
        assert sorted(p.name for p in (log_dir / prefix).glob("epoch_*")) == [
            f"epoch_{e:03d}" for e in range(3)
        ]
        files = sorted((log_dir / prefix).rglob("*.png"))
        # 3 epochs x targets x 2 images (plus a sheet per epoch), plus the timeline: nothing written twice,
        # nothing missing.
        sheet_files = [f for f in files if "channels" in f.relative_to(log_dir / prefix).parts]
        # A sheet per epoch, and the layer's timeline and specialisation curve.
        assert len(sheet_files) == (3 + 2 if prefix == "featvis" else 0)
        assert len(files) - len(sheet_files) == 3 * len(names) * 2 + 1
        for epoch in range(3):
            for name in names:
                image = img.load_png(log_dir / prefix / f"epoch_{epoch:03d}" / name / "1.png")
                assert image.shape == (3, SIZE, SIZE)
                assert float(image.std()) > 0  # a real render, not the zero padding of a shard
    # The gathered images equal a single-process render of the same shard with the same weights: the pictures
    # of rank 1's targets are not rank 0's.
    first = img.load_png(Path(log_dir) / "featvis" / "epoch_000" / CLASSES[0] / "0.png")
    last = img.load_png(Path(log_dir) / "featvis" / "epoch_000" / CLASSES[2] / "0.png")
    assert not torch.equal(first, last)
