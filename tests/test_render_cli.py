"""``featvis render``: checkpoint to PNG folder, determinism, metrics, and clean failures."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import write_cifar_folder

from featvis.cli import render_main
from featvis.data import CIFARDataModule
from featvis.engine import render
from featvis.images import load_png
from featvis.model import ClassifierModule, load_classifier


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


def test_render_metrics_agree_with_an_independent_render(tmp_path, tiny_ckpt) -> None:
    data_dir = tiny_ckpt.parent / "data"  # the tiny run's own training data
    code, out = _run(
        tmp_path,
        tiny_ckpt,
        "m",
        *("--classes", "0", "1", "2", "--images-per-class", "2", "--metrics"),
        *("--reference", str(tiny_ckpt), "--data-dir", str(data_dir), "--autocast", "none"),
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = {
        "mean_objective",
        "diversity",
        "robustness",
        "spectral_gap",
        "transfer_accuracy",
        "reference_diversity",
    }
    assert set(metrics) == names
    assert 0.0 <= metrics["reference_diversity"] <= 2.0  # a mean cosine distance, in the reference's features
    # The same render in process: the reference (the model itself) calls an image right exactly when the
    # model's own final logits put its class first.
    module = load_classifier(str(tiny_ckpt))
    result = render(module, [0, 1, 2], colour=module.colour, steps=3, images_per_target=2, autocast="none")
    right = result.logits.argmax(dim=-1) == torch.tensor([[0], [1], [2]])
    assert metrics["transfer_accuracy"] == pytest.approx(float(right.float().mean()))
    assert metrics["mean_objective"] == pytest.approx(float(result.values.mean()), rel=1e-5)
    assert 0.0 < metrics["robustness"] < 1.0  # a mean softmax probability
    assert math.isfinite(metrics["spectral_gap"]) and metrics["spectral_gap"] > 0.0


def test_phase_render_keeps_training_images_spectra_from_the_data_dir(tmp_path, tiny_ckpt) -> None:
    data_dir = tiny_ckpt.parent / "data"
    contrast = {}
    for kind in ("fourier", "phase"):
        extra = (
            "--classes",
            "cat",
            "--images-per-class",
            "2",
            "--parameterisation",
            kind,
            "--data-dir",
            str(data_dir),
            "--colour-weight",  # the parameterisations alone: the colour prior raises 1/f pictures' contrast too
            "0",
        )
        code, out = _run(tmp_path, tiny_ckpt, kind, *extra)
        assert code == 0
        rgb = torch.stack([load_png(out / "cat" / f"{i}.png") for i in (0, 1)])
        contrast[kind] = float(load_classifier(str(tiny_ckpt)).colour.to_model(rgb).std())
    # Three steps from the small random start: 1/f pictures are nearly flat, phase-only ones carry the training
    # images' amplitude spectra.
    assert contrast["fourier"] < 0.2 < 0.5 < contrast["phase"], contrast


def _moved(tmp_path: Path, ckpt: Path) -> tuple[Path, Path]:
    """A copy of ``ckpt`` whose saved ``data.data_dir`` names a folder that no longer exists."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    gone = tmp_path / "gone"
    checkpoint["datamodule_hyper_parameters"]["data_dir"] = str(gone)
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    return moved, gone


def test_training_images_come_from_the_runs_data_dir_without_the_flag(tmp_path, tiny_ckpt, capsys) -> None:
    extra = ("--classes", "cat", "--images-per-class", "2", "--init-layout", "1")
    code, flagged = _run(tmp_path, tiny_ckpt, "flag", *extra, "--data-dir", str(tiny_ckpt.parent / "data"))
    assert code == 0
    code = render_main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "saved"), "--steps", "3", *extra])
    assert code == 0
    assert f"training images from {tiny_ckpt.parent / 'data'}" in capsys.readouterr().err
    for i in (0, 1):  # the same training images, so the same layouts and the same bytes
        saved = (tmp_path / "saved" / "cat" / f"{i}.png").read_bytes()
        assert saved == (flagged / "cat" / f"{i}.png").read_bytes()
    # Where the run's folder has gone, the flag is asked for, naming the folder; nothing is written.
    moved, gone = _moved(tmp_path, tiny_ckpt)
    code, out = _run(tmp_path, moved, "moved", *extra)
    err = capsys.readouterr().err
    assert code == 2 and "pass --data-dir" in err and f"data.data_dir {gone} holds none" in err
    assert not out.exists()


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


@pytest.mark.parametrize(
    "extra", [("--parameterisation", "phase"), ("--fourier-scale", "data"), ("--init-layout", "0.5")]
)
def test_settings_that_take_training_images_exit_2_without_them(tmp_path, tiny_ckpt, capsys, extra) -> None:
    moved, _ = _moved(tmp_path, tiny_ckpt)
    code, out = _run(tmp_path, moved, "bad", *extra)
    assert code == 2
    assert "--parameterisation phase, --fourier-scale data and --init-layout take training images" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved.ckpt"]


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


# --- bad input is refused before any rendering, and no user file is ever deleted ---------------------------


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root``: file bytes, or None for a folder."""
    paths = sorted(root.rglob("*"))
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in paths}


def _user_files(folder: Path) -> dict[str, bytes | None]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("user notes\n")
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "table.csv").write_bytes(b"a,b\n1,2\n")
    return _snapshot(folder)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featvis render: error: "), err
    return lines[0]


@pytest.fixture
def no_render(monkeypatch):
    """Fail the test if rendering starts: these errors must be found before any optimisation."""
    import featvis.engine

    def render(*args, **kwargs):
        raise AssertionError("render() was called")

    monkeypatch.setattr(featvis.engine, "render", render)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("--layer", "net.conv1", "--channel", "-1"),
            "channel must be an integer >= 0, got -1.",
        ),
        (
            ("--layer", "net.conv1", "--channel", "0", "8"),
            "channel 8 is out of range: layer 'net.conv1' has 8 channels (valid: 0..7).",
        ),
        (("--layer", "colour"), "layer 'colour' is not called by the model's forward pass; choose one of: "),
    ],
)
def test_bad_layer_or_channel_is_refused_before_rendering(
    tmp_path, tiny_ckpt, capsys, no_render, extra, message
) -> None:
    code, out = _run(tmp_path, tiny_ckpt, "bad", *extra)
    assert code == 2
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_layer_not_called_lists_the_layers_that_are(tmp_path, tiny_ckpt, capsys, no_render) -> None:
    assert _run(tmp_path, tiny_ckpt, "bad", "--layer", "colour")[0] == 2
    choices = _one_error_line(capsys).split("choose one of: ", 1)[1].rstrip(".").split(", ")
    assert choices[:3] == ["net", "net.conv1", "net.relu1"]
    assert "net.head" in choices and "colour" not in choices and "train_acc" not in choices


def test_checkpoint_folder_is_named_as_a_folder(tmp_path, tiny_ckpt, capsys) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(tiny_ckpt.read_bytes())
    assert _run(tmp_path, folder, "out")[0] == 2
    line = _one_error_line(capsys)
    assert f"checkpoint {folder} is a folder, not a file" in line
    assert str(folder / "last.ckpt") in line and "does not exist" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 4, b"epoch,loss\n1,0.5\n", b"not a checkpoint"],
    ids=["random", "text", "short"],
)
def test_file_that_is_not_a_checkpoint(tmp_path, capsys, content) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    assert _run(tmp_path, path, "out")[0] == 2
    line = _one_error_line(capsys)
    assert (
        f"checkpoint {path}: it is not a Lightning checkpoint (torch.load failed: the file is not a "
        "torch.save archive); pass the .ckpt written by featvis fit." in line
    )
    assert "weights_only" not in line and "issue" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_zip_that_is_not_a_checkpoint(tmp_path, capsys) -> None:
    import zipfile

    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not weights")
    assert _run(tmp_path, path, "out")[0] == 2
    line = _one_error_line(capsys)
    assert f"checkpoint {path}: it is not a Lightning checkpoint (torch.load failed: " in line
    assert line.endswith("; pass the .ckpt written by featvis fit.")
    assert "weights_only" not in line and "issue" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_plain_torch_dict_is_not_a_lightning_checkpoint(tmp_path, capsys) -> None:
    path = tmp_path / "dict.pt"
    torch.save({"a": 1}, path)
    assert _run(tmp_path, path, "out")[0] == 2
    line = _one_error_line(capsys)
    assert (
        f"checkpoint {path}: it is not a Lightning checkpoint (it lacks 'pytorch-lightning_version', "
        "'state_dict'); pass the .ckpt written by featvis fit." in line
    )
    assert "KeyError" not in line


@pytest.mark.parametrize("out", [".", "..", "../.."])
def test_overwrite_of_current_directory_or_ancestor_keeps_every_file(
    tmp_path, tiny_ckpt, capsys, monkeypatch, out
) -> None:
    _user_files(tmp_path / "home")
    work = tmp_path / "home" / "project" / "sub"
    work.mkdir(parents=True)
    (work / "train.py").write_text("print('mine')\n")
    before = _snapshot(tmp_path / "home")
    monkeypatch.chdir(work)
    code = render_main(["--ckpt", str(tiny_ckpt), "--out", out, "--overwrite", "--steps", "1", "--quiet"])
    assert code == 2
    assert "is the current directory or one of its ancestors" in _one_error_line(capsys)
    assert _snapshot(tmp_path / "home") == before


@pytest.mark.parametrize("where", ["last.ckpt", "checkpoints/last.ckpt"])
def test_overwrite_of_the_folder_holding_the_checkpoint_keeps_it(tmp_path, tiny_ckpt, capsys, where) -> None:
    run = tmp_path / "run"
    _user_files(run)
    ckpt = run / where
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    before = _snapshot(run)
    code = render_main(["--ckpt", str(ckpt), "--out", str(run), "--overwrite", "--steps", "1", "--quiet"])
    assert code == 2
    assert f"output folder {run} contains {ckpt}, which featvis must not delete" in _one_error_line(capsys)
    assert _snapshot(run) == before


def test_overwrite_of_a_folder_featvis_did_not_write_keeps_it(tmp_path, tiny_ckpt, capsys) -> None:
    before = _user_files(tmp_path / "photos")
    code, out = _run(tmp_path, tiny_ckpt, "photos", "--overwrite")
    assert code == 2
    assert "was not written by featvis" in _one_error_line(capsys)
    assert _snapshot(out) == before


def test_overwrite_of_a_file_keeps_it_and_renders_nothing(tmp_path, tiny_ckpt, capsys, no_render) -> None:
    (tmp_path / "report.txt").write_text("mine")
    code, _ = _run(tmp_path, tiny_ckpt, "report.txt", "--overwrite")
    assert code == 2
    assert f"output folder {tmp_path / 'report.txt'} is a file" in _one_error_line(capsys)
    assert _snapshot(tmp_path) == {"report.txt": b"mine"}


def test_out_under_a_file_or_in_proc_is_refused_before_rendering(
    tmp_path, tiny_ckpt, capsys, no_render
) -> None:
    (tmp_path / "report.txt").write_text("mine")
    assert _run(tmp_path, tiny_ckpt, "report.txt/renders")[0] == 2
    assert f"{tmp_path / 'report.txt'} is a file, not a folder" in _one_error_line(capsys)
    assert _snapshot(tmp_path) == {"report.txt": b"mine"}
    if Path("/proc/self").is_dir():
        code = render_main(["--ckpt", str(tiny_ckpt), "--out", "/proc/featvis-renders", "--quiet"])
        assert code == 2
        assert "cannot create output folder /proc/featvis-renders" in _one_error_line(capsys)


def test_second_render_with_overwrite_replaces_a_featvis_folder(tmp_path, tiny_ckpt) -> None:
    code, out = _run(tmp_path, tiny_ckpt, "r", "--classes", "cat", "--images-per-class", "1")
    assert code == 0
    assert (out / "cat" / "0.png").is_file()
    assert _run(tmp_path, tiny_ckpt, "r", "--classes", "dog", "--images-per-class", "1")[0] == 2
    code, out = _run(tmp_path, tiny_ckpt, "r", "--classes", "dog", "--images-per-class", "1", "--overwrite")
    assert code == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [".featvis-manifest.json", "dog/0.png", "grid.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no staging or old copy left beside it


def test_user_file_in_a_featvis_folder_stops_overwrite(tmp_path, tiny_ckpt, capsys) -> None:
    code, out = _run(tmp_path, tiny_ckpt, "r", "--classes", "cat", "--images-per-class", "1")
    assert code == 0
    (out / "cat" / "my-edit.png").write_bytes(b"user edit")
    before = _snapshot(out)
    capsys.readouterr()
    code, _ = _run(tmp_path, tiny_ckpt, "r", "--classes", "dog", "--images-per-class", "1", "--overwrite")
    assert code == 2
    assert "holds cat/my-edit.png, which featvis did not write" in _one_error_line(capsys)
    assert _snapshot(out) == before


def test_stale_partial_folders_of_the_same_out_are_removed(tmp_path, tiny_ckpt) -> None:
    for name in (".r.partial-abc123", ".r.partial-x9k2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.png").write_bytes(b"half")
    (tmp_path / ".other.partial-abc123").mkdir()  # another output folder's: not ours to remove
    code, _ = _run(tmp_path, tiny_ckpt, "r", "--classes", "cat", "--images-per-class", "1")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-abc123", "r"]


def test_out_folder_mode_follows_the_umask(tmp_path, tiny_ckpt) -> None:
    old = os.umask(0o022)
    try:
        code, out = _run(tmp_path, tiny_ckpt, "r", "--classes", "cat", "--images-per-class", "1")
    finally:
        os.umask(old)
    assert code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "cat").stat().st_mode) == 0o755


def test_manifest_lists_exactly_the_written_files(tmp_path, tiny_ckpt) -> None:
    code, out = _run(
        tmp_path, tiny_ckpt, "m", "--classes", "cat", "dog", "--images-per-class", "2", "--metrics"
    )
    assert code == 0
    manifest = json.loads((out / ".featvis-manifest.json").read_text())
    written = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != ".featvis-manifest.json"
    )
    assert manifest["format"] == 1
    assert manifest["files"] == written
    assert written == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "grid.png", "metrics.json"]


# ---------------------------------------------------------------------------------------------- --model-class


def test_model_class_renders_any_lightning_checkpoint_as_its_last_epoch(tmp_path) -> None:
    """A module that knows nothing of featvis: the CLI's render equals the callback's last-epoch PNGs."""
    from helpers import FAST, RGB_MEAN, RGB_STD, PlainRGB, make_trainer

    from featvis.callback import FeatureVisCallback

    callback = FeatureVisCallback(
        normalization_mean=RGB_MEAN, normalization_std=RGB_STD, config=FAST.replace(seed=5)
    )
    trainer = make_trainer(tmp_path, [callback], epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(PlainRGB())
    ckpt = tmp_path / "plain.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "cli"
    code = render_main(
        ["--ckpt", str(ckpt), "--out", str(out), "--model-class", "helpers.PlainRGB", "--quiet"]
    )
    assert code == 0
    epoch = tmp_path / "featvis" / "epoch_001"
    run_pngs = sorted(p.relative_to(epoch) for p in epoch.rglob("*.png"))
    assert len(run_pngs) == 3 * FAST.images_per_target  # three classes, as the run rendered them
    assert sorted(p.relative_to(out) for p in out.rglob("*.png") if p.name != "grid.png") == run_pngs
    for name in run_pngs:
        cli, run = load_png(out / name).float(), load_png(epoch / name).float()
        assert float((cli - run).abs().max()) <= 1.5 / 255, name  # at most one grey level (float rounding)
    # The learned basis made the difference: without it (per-channel colours) the pictures are other ones.
    plain = tmp_path / "plain_state.ckpt"
    checkpoint = torch.load(ckpt, weights_only=False)
    for state in checkpoint["callbacks"].values():
        for key in ("basis_mean", "basis_matrix", "basis_inverse"):
            state.pop(key)
    torch.save(checkpoint, plain)
    again = tmp_path / "cli_no_basis"
    argv = ["--ckpt", str(plain), "--out", str(again), "--model-class", "helpers.PlainRGB", "--quiet"]
    assert render_main(argv) == 0
    differs = [
        float((load_png(again / n).float() - load_png(epoch / n).float()).abs().max()) for n in run_pngs
    ]
    assert max(differs) > 0.05


@pytest.mark.parametrize(
    ("model_class", "message"),
    [
        ("helpers.NoSuchModule", "--model-class helpers.NoSuchModule cannot be imported"),
        ("no_such_package.Module", "--model-class no_such_package.Module cannot be imported"),
        ("torch.nn.Linear", "--model-class torch.nn.Linear is not a LightningModule class"),
        ("Module", "--model-class Module names no module"),
    ],
)
def test_bad_model_class_exits_2_before_loading(tmp_path, tiny_ckpt, capsys, model_class, message) -> None:
    code, out = _run(tmp_path, tiny_ckpt, "bad", "--model-class", model_class)
    assert code == 2 and not out.exists()
    line = _one_error_line(capsys)
    assert message in line and "my_pkg.models.MyModule" in line


def test_model_class_that_does_not_fit_the_checkpoint_names_the_class(tmp_path, tiny_ckpt, capsys) -> None:
    code, out = _run(tmp_path, tiny_ckpt, "bad", "--model-class", "helpers.PlainRGB")
    assert code == 2 and not out.exists()
    assert f"cannot load checkpoint {tiny_ckpt} as a PlainRGB" in _one_error_line(capsys)
