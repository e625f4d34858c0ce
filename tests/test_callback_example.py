"""The callback, unchanged, on another LightningModule: examples/resnet18_rgb.py (ResNet-18, normalised RGB, 64 px)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from featvis import images as img

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resnet18_rgb.py"


def load_example():
    spec = importlib.util.spec_from_file_location("resnet18_rgb", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet18_example_logs_64px_images(tmp_path):
    example = load_example()
    args = ["--epochs", "1", "--classes", "2", "--samples", "4", "--batch-size", "2"]
    args += ["--limit-train-batches", "1", "--render-steps", "1", "--images-per-target", "2", "--no-metrics"]
    trainer = example.main([*args, "--root", str(tmp_path)])
    log_dir = Path(trainer.log_dir)
    (event_file,) = log_dir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={IMAGES: 0})
    acc.Reload()
    names = example.SHAPES[:2]
    assert set(acc.Tags()["images"]) == {f"featvis/{n}" for n in names} | {"featvis/all", "featvis/timeline"}
    scale, pad = 128 // 64, 2
    for name in names:
        events = acc.Images(f"featvis/{name}")
        assert [e.step for e in events] == [0, 1]
        assert {(e.width, e.height) for e in events} == {(2 * 64 * scale + 3 * pad, 64 * scale + 2 * pad)}
    assert [(e.width, e.height) for e in acc.Images("featvis/all")] == [(2 * 128 + 6, 2 * 128 + 6)] * 2
    (timeline,) = acc.Images("featvis/timeline")  # targets x epochs, plus margins for the labels
    assert timeline.step == 1 and timeline.width > 2 * 128 + 6 and timeline.height > 2 * 128 + 6
    # PNGs at the native 64 px, in RGB.
    image = img.load_png(log_dir / "featvis" / "epoch_001" / names[0] / "1.png")
    assert image.shape == (3, 64, 64) and float(image.std()) > 0
    # The callback's colour is the given normalisation: model-space zero is the mean colour.
    callback = next(c for c in trainer.callbacks if type(c).__name__ == "FeatureVisCallback")
    mean_rgb = callback.space.to_rgb(torch.zeros(1, 3, 1, 1)).flatten()
    assert torch.allclose(mean_rgb, torch.tensor(example.MEAN))
