"""``featvis render``: checkpoint to PNG folder, determinism, metrics, and clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_cifar_folder

from featvis.cli import render_main
from featvis.data import CIFARDataModule
from featvis.images import load_png
from featvis.model import ClassifierModule


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("render")
    write_cifar_folder(root / "data", per_batch=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0)
    data = CIFARDataModule(data_dir=str(root / "data"), batch_size=16, eval_batch_size=32, download=False)
    model = ClassifierModule(network="small_cnn", widths=[8, 8, 8], channels_last=False)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    try:
        trainer.fit(model, data)
    finally:
        torch.set_num_threads(threads)
    path = root / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def _run(tmp_path: Path, ckpt: Path, name: str, *extra: str) -> tuple[int, Path]:
    out = tmp_path / name
    code = render_main(["--ckpt", str(ckpt), "--out", str(out), "--steps", "3", "--quiet", *extra])
    return code, out


def test_render_writes_class_folders_and_grid_deterministically(tmp_path, tiny_ckpt) -> None:
    code, out = _run(tmp_path, tiny_ckpt, "a", "--classes", "cat", "2", "--images-per-class", "2")
    assert code == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["bird/0.png", "bird/1.png", "cat/0.png", "cat/1.png", "grid.png"]
    image = load_png(out / "cat" / "0.png")
    assert image.shape == (3, 32, 32) and image.min() >= 0.0 and image.max() <= 1.0
    assert image.std() > 0.01  # a rendered picture, not a flat fill
    code, again = _run(tmp_path, tiny_ckpt, "b", "--classes", "cat", "2", "--images-per-class", "2")
    assert code == 0
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes()
    code, other = _run(
        tmp_path, tiny_ckpt, "c", "--classes", "cat", "2", "--images-per-class", "2", "--seed", "1"
    )
    assert (other / "cat" / "0.png").read_bytes() != (out / "cat" / "0.png").read_bytes()


def test_render_metrics_json(tmp_path, tiny_ckpt) -> None:
    code, out = _run(
        tmp_path,
        tiny_ckpt,
        "m",
        "--classes",
        "0",
        "1",
        "--images-per-class",
        "2",
        "--metrics",
        "--reference",
        str(tiny_ckpt),
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["robustness"] <= 1.0
    assert 0.0 <= metrics["diversity"] <= 2.0
    assert metrics["transfer_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--classes", "dgo"), "unknown class 'dgo'"),
        (("--classes", "12"), "class index 12 is out of range"),
        (("--layer", "net.nope", "--channel", "0"), "unknown layer"),
        (("--channel", "0"), "--channel needs --layer"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_ckpt, capsys, extra, message) -> None:
    code, out = _run(tmp_path, tiny_ckpt, "bad", *extra)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoint_and_existing_output(tmp_path, tiny_ckpt, capsys) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    assert _run(tmp_path, tmp_path / "missing.ckpt", "x")[0] == 2
    assert "does not exist" in capsys.readouterr().err
    assert _run(tmp_path, broken, "y")[0] == 2
    assert "cannot load checkpoint" in capsys.readouterr().err
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("user data")
    code = render_main(["--ckpt", str(tiny_ckpt), "--out", str(keep), "--steps", "1", "--quiet"])
    assert code == 2
    assert (keep / "mine.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ckpt", "keep"]


def test_progress_is_reported_on_stderr(tmp_path, tiny_ckpt, capsys) -> None:
    out = tmp_path / "p"
    code = render_main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--steps", "8", "--classes", "0"])
    assert code == 0
    err = capsys.readouterr().err
    assert "step 8/8" in err and "step 1/8" in err
    assert err.index("step 1/8") < err.index("step 8/8")
