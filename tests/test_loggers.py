"""Every common logger gets what it can show: W&B and MLflow images read back from what their clients wrote.

Each test runs a one-epoch fit (renders at epoch 0, step 0, and epoch 1, step ``BATCHES``; the timeline at the
end) with the real client library and no network: W&B offline, MLflow on a file store under ``tmp_path``. The
logged pictures are decoded and compared with the PNG files the callback wrote for the same epoch, upsampled as
the callback does, so a picture under the wrong step or tag, or with other pixels, fails.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import lightning as L
import numpy as np
import pytest
import torch
from helpers import CLASSES, FAST, SIZE, TinyClassifier, make_trainer, png_epochs, read_events, read_scalars
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from featvis import images as img
from featvis.callback import FeatureVisCallback
from featvis.outputs import RenderOutputs, WarnOnce

BATCHES = -(-TinyClassifier().samples // 16)  # one epoch ends at this global step
STEPS = {0: 0, 1: BATCHES}  # rendered epoch -> global step of its pictures
SCALE = 128 // SIZE  # the callback's default display scale
KEYS = [f"featvis/{tag}" for tag in CLASSES] + ["featvis/all"]


def _fit(root: Path, logger: Logger | list[Logger]) -> L.Trainer:
    trainer = make_trainer(root, [FeatureVisCallback(config=FAST)], epochs=1, logger=logger)
    trainer.fit(TinyClassifier())
    return trainer


def _expected(log_dir: Path, epoch: int, key: str) -> torch.Tensor:
    """The ``(H, W, 3)`` uint8 picture of ``key`` for ``epoch``, rebuilt from the PNG files the callback wrote."""
    if key == "featvis/timeline":
        return img.to_uint8(img.load_png(log_dir / "featvis" / "timeline.png"))
    folder = log_dir / "featvis" / f"epoch_{epoch:03d}"
    tags = CLASSES if key == "featvis/all" else [key.split("/", 1)[1]]
    rgb = torch.stack(
        [
            torch.stack([img.load_png(folder / tag / f"{i}.png") for i in range(FAST.images_per_target)])
            for tag in tags
        ]
    )
    return img.to_uint8(img.grid(rgb, scale=SCALE, padding=2))


def _decoded(path: Path) -> torch.Tensor:
    with Image.open(path) as picture:
        return torch.from_numpy(np.asarray(picture.convert("RGB")).copy())


def _check_pictures(found: dict[str, list[tuple[int, Path]]], log_dir: Path) -> None:
    """One picture per key and rendered epoch at that epoch's step (the timeline once, at the end), as rendered."""
    assert {key: [step for step, _ in pictures] for key, pictures in found.items()} == {
        **{key: list(STEPS.values()) for key in KEYS},
        "featvis/timeline": [BATCHES],
    }
    for key, pictures in found.items():
        for epoch, (_, path) in zip(STEPS, pictures, strict=False):
            assert torch.equal(_decoded(path), _expected(log_dir, epoch, key)), (key, epoch)
    assert png_epochs(log_dir) == ["epoch_000", "epoch_001"]


# ---------------------------------------------------------------------------------------------- W&B offline


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline run's ``.wandb`` file (a LevelDB-style log; recent wandb ships no Python reader).

    The file is a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type:
    1 whole, 2 first, 3 middle, 4 last); a block's tail shorter than a chunk header is padding.
    """
    from wandb.proto import wandb_internal_pb2

    raw, block, records, pos, data = path.read_bytes(), 32768, [], 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(raw):  # the end of what is written so far
            break
        chunk, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        data = chunk if kind in (1, 2) else data + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            records.append(record)
    return records


def _wandb_history(run_dir: Path, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every ``wandb.log`` row of the finished run, flattened keys (``featvis/red/filenames``) to values.

    ``wandb.finish()`` can return before wandb's service process has written the run's file (seen on a busy
    machine: only the 7-byte header right after it), so this waits for the run's last record, ``exit``.
    """
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        kinds = [record.WhichOneof("record_type") for record in records]
        if "exit" in kinds:
            break
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s: {kinds}"
        time.sleep(0.1)
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]


def _wandb_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[WandbLogger] = WandbLogger
) -> tuple[Any, WandbLogger]:
    """The wandb module and an offline logger of ``cls`` that writes only under ``tmp_path`` (no network)."""
    wandb = pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", str(tmp_path))):
        monkeypatch.setenv(name, value)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # nothing under the home folder
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return wandb, cls(save_dir=str(tmp_path), project="featvis-test", offline=True)


def test_wandb_offline_gets_captioned_images_at_the_global_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb, logger = _wandb_logger(tmp_path, monkeypatch)
    try:
        with warnings.catch_warnings():
            # W&B shows images: no warning that they go to PNG files only.
            warnings.filterwarnings("error", message=".*FeatureVisCallback.*")
            trainer = _fit(tmp_path, logger)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    rows = _wandb_history(run_dir)
    found: dict[str, list[tuple[int, Path]]] = {}
    captions: dict[str, list[str]] = {}
    for row in rows:
        for key in [*KEYS, "featvis/timeline"]:
            if f"{key}/filenames" in row:
                assert row[f"{key}/count"] == 1 and row[f"{key}/_type"] == "images/separated"
                (name,) = row[f"{key}/filenames"]
                found.setdefault(key, []).append((row["trainer/global_step"], run_dir / "files" / name))
                captions.setdefault(key, []).extend(row[f"{key}/captions"])
    _check_pictures(found, Path(trainer.log_dir))
    assert captions["featvis/red"] == ["red", "red"]  # a target's caption is its tag
    assert captions["featvis/all"] == ["3 targets (rows) x 2 images"] * 2
    assert captions["featvis/timeline"] == ["3 targets (rows) x epochs 0..1 (columns)"]
    scalars = [(row["trainer/global_step"], row["epoch"]) for row in rows if "featvis/objective" in row]
    assert scalars == [(0, 0), (BATCHES, 1)]  # the scalars as before, with the epoch beside them


# ---------------------------------------------------------------------------------------------- MLflow


def _mlflow_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[MLFlowLogger] = MLFlowLogger
) -> MLFlowLogger:
    pytest.importorskip("mlflow")
    # Recent mlflow (3.17 here) refuses the file store, now in maintenance mode, unless told; it needs no server.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return cls(experiment_name="featvis", tracking_uri=f"file:{tmp_path}/mlruns")


def _mlflow_artifacts(logger: MLFlowLogger) -> Path:
    """The run's artifact folder on the file store, as MLflow reports it."""
    uri = logger.experiment.get_run(logger.run_id).info.artifact_uri
    return Path(unquote(urlparse(uri).path))


def _mlflow_images(logger: MLFlowLogger) -> dict[str, list[tuple[int, Path]]]:
    """``key -> [(step, png)]`` from ``images/<key with / as ~>+step+<step>+timestamp+<ms>+<uuid>.png``."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted((_mlflow_artifacts(logger) / "images").glob("*.png")):
        key, step_word, step, *_ = path.stem.split("+")
        assert step_word == "step"
        found.setdefault(key.replace("~", "/"), []).append((int(step), path))
    return {key: sorted(pictures) for key, pictures in found.items()}


def test_mlflow_file_store_gets_images_per_key_and_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = _mlflow_logger(tmp_path, monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*FeatureVisCallback.*")
        trainer = _fit(tmp_path, logger)
    _check_pictures(_mlflow_images(logger), Path(trainer.log_dir))
    history = logger.experiment.get_metric_history(logger.run_id, "featvis/objective")
    assert sorted(m.step for m in history) == [0, BATCHES]


def test_mlflow_before_2_12_gets_artifact_files_named_by_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    class OldClient(MlflowClient):
        """A real client with the log_image signature of mlflow < 2.12 (no key, no step)."""

        def log_image(self, run_id: str, image: Any, artifact_file: str) -> None:  # type: ignore[override]
            super().log_image(run_id, image, artifact_file=artifact_file)

    class OldMLFlowLogger(MLFlowLogger):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._mlflow_client = OldClient(kwargs["tracking_uri"])

    logger = _mlflow_logger(tmp_path, monkeypatch, OldMLFlowLogger)
    outputs = RenderOutputs("fv", save_png=False, display_scale=2, warn=WarnOnce())
    rgb = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not rejected: no warning
        for step in (0, 12):
            outputs.log_render([logger], tmp_path, step, step, rgb, ["a", "b"], {})
    files = sorted(
        p.relative_to(_mlflow_artifacts(logger)).as_posix() for p in _mlflow_artifacts(logger).rglob("*")
    )
    files = [f for f in files if f.endswith(".png")]
    assert files == [f"fv/{tag}/step_{step:06d}.png" for tag in ("a", "all", "b") for step in (0, 12)]
    strip = _decoded(_mlflow_artifacts(logger) / "fv" / "b" / "step_000012.png")
    assert torch.equal(strip, img.to_uint8(img.grid(rgb[1:2], scale=2, padding=2)))


# ---------------------------------------------------------------------------------------------- CSV, several loggers


def _info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted({r.getMessage() for r in caplog.records if "cannot show images" in r.getMessage()})


def test_csv_logger_gets_pngs_metrics_and_one_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning's logger stops propagation when the root logger has no handler yet; let caplog see its records.
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.filterwarnings("error", message=".*FeatureVisCallback.*")  # an info, not a warning
        trainer = _fit(tmp_path, logger)
    log_dir = Path(trainer.log_dir)
    assert _info_lines(caplog) == [
        f"FeatureVisCallback: CSVLogger cannot show images; they are written as PNG files under {log_dir / 'featvis'}/."
    ]
    for epoch in STEPS:
        folder = log_dir / "featvis" / f"epoch_{epoch:03d}"
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
            f"{tag}/{i}.png" for tag in sorted(CLASSES) for i in range(FAST.images_per_target)
        ]
        assert img.load_png(folder / "red" / "1.png").shape == (3, SIZE, SIZE)  # native size
    timeline = img.load_png(log_dir / "featvis" / "timeline.png")
    # 3 targets x 2 epochs, upsampled, with labels in the margins.
    assert timeline.shape[1] > 3 * SIZE * SCALE and timeline.shape[2] > 2 * SIZE * SCALE
    lines = (log_dir / "metrics.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    assert [(int(r["step"]), int(r["epoch"])) for r in rows if r["featvis/objective"]] == [
        (0, 0),
        (BATCHES, 1),
    ]


def test_several_loggers_each_get_what_they_show(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    mlflow = _mlflow_logger(tmp_path, monkeypatch)
    csv = CSVLogger(str(tmp_path), name="csv", version=0)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.filterwarnings("error", message=".*FeatureVisCallback.*")
        trainer = _fit(tmp_path, [tb, mlflow, csv])
    log_dir = Path(trainer.log_dir)  # the first logger's folder holds the PNG files
    assert log_dir == tmp_path / "tb" / "version_0"
    _check_pictures(_mlflow_images(mlflow), log_dir)
    events = read_events(log_dir)["images"]
    assert {key: [(s, w, h) for s, w, h in events[key]] for key in KEYS} == {
        key: [(step, *_expected(log_dir, epoch, key).shape[1::-1]) for epoch, step in STEPS.items()]
        for key in KEYS
    }
    assert [s for s, _, _ in events["featvis/timeline"]] == [BATCHES]
    # Scalars go to every logger, at the same steps.
    assert [step for step, _ in read_scalars(log_dir, "featvis/objective")] == [0, BATCHES]
    history = mlflow.experiment.get_metric_history(mlflow.run_id, "featvis/objective")
    assert sorted(m.step for m in history) == [0, BATCHES]
    lines = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    assert [int(r["step"]) for r in rows if r["featvis/objective"]] == [0, BATCHES]
    assert _info_lines(caplog) == [
        f"FeatureVisCallback: CSVLogger cannot show images; they are written as PNG files under {log_dir / 'featvis'}/."
    ]


# ---------------------------------------------------------------------------------------------- a rejecting client


class RejectingWandbLogger(WandbLogger):
    """A real WandbLogger (scalars go to its offline run) whose image call fails, as an incompatible client would."""

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        raise ValueError("wandb.Image cannot encode this array")


def test_a_logger_that_rejects_images_costs_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb, rejecting = _wandb_logger(tmp_path, monkeypatch, RejectingWandbLogger)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    try:
        with pytest.warns(UserWarning, match="RejectingWandbLogger rejected") as record:
            trainer = _fit(tmp_path, [tb, rejecting])
        run_dir = Path(rejecting.experiment.dir).parent
    finally:
        wandb.finish()
    messages = [str(w.message) for w in record if "FeatureVisCallback" in str(w.message)]
    log_dir = Path(trainer.log_dir)
    assert messages == [  # once, though every render and the timeline were rejected
        "FeatureVisCallback: RejectingWandbLogger rejected the image 'featvis/red' (ValueError: wandb.Image cannot "
        "encode this array); it still gets the scalars, the other loggers the images, and the PNG files go under "
        f"{log_dir / 'featvis'}/. To fix: upgrade wandb (pip install -U 'featvis[wandb]') and check the run's "
        "setup (wandb login, or WANDB_MODE=offline without a network)."
    ]
    events = read_events(log_dir)["images"]  # the other logger got every picture
    assert {key: [s for s, _, _ in events[key]] for key in [*KEYS, "featvis/timeline"]} == {
        **{key: list(STEPS.values()) for key in KEYS},
        "featvis/timeline": [BATCHES],
    }
    assert png_epochs(log_dir) == ["epoch_000", "epoch_001"]
    assert (log_dir / "featvis" / "timeline.png").is_file()
    rows = _wandb_history(run_dir)  # the rejecting logger still got the scalars
    assert [(row["trainer/global_step"], row["epoch"]) for row in rows if "featvis/objective" in row] == [
        (0, 0),
        (BATCHES, 1),
    ]
    assert not any(key.endswith("/filenames") for row in rows for key in row)
