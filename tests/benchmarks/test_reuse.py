"""The reuse benchmark on tiny synthetic CIFAR-format data: one training batch, one render step."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import write_cifar_folder

import benchmarks.reuse as reuse
from benchmarks.reference_models import train_reference
from featvis.images import load_png

TINY_REFS = (4, 8, 8)
PER_CLASS = 2
FAST = ["--train-subset", "32", "--batch-size", "32", "--steps", "1", "--per-class", str(PER_CLASS)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One benchmark run with two tiny reference models; its outputs and the folder they are in."""
    root = tmp_path_factory.mktemp("reuse")
    write_cifar_folder(root / "data", per_batch=250, seed=1)  # >= 18 test images per class: enough for k=10
    write_cifar_folder(root / "ref_data", per_batch=20, seed=2)  # the references only need to be models
    refs = []
    for arch, seed in (("preact_resnet", 0), ("vgg_avg", 1)):
        path = root / "ref" / f"{arch}.pt"
        train_reference(
            arch, seed, root / "ref_data", 1, path, batch_size=50, widths=TINY_REFS, bf16=False, log=None
        )
        refs.append(str(path))
    args = ["--data-dir", str(root / "data"), "--out", str(root / "out"), "--json", str(root / "r.json")]
    args += ["--refs", *refs, "--epochs", "1", "--grey-epochs", "1", *FAST]
    result = reuse.main(args)
    return {"result": result, "out": root / "out", "json": root / "r.json", "data": root / "data"}


def test_table_has_every_row_with_finite_numbers(run):
    table = (run["out"] / "table.md").read_text()
    for label in reuse.ROWS.values():
        assert f"| {label} |" in table
    titles = ("transfer (refs)", "target prob (refs)", "plausibility", "diversity vs real (refs)")
    for title in (*titles, "spectral gap", "colour distance"):
        assert title in table
    rows = json.loads(run["json"].read_text())["rows"]
    assert set(rows) == set(reuse.ROWS)
    for key, row in rows.items():
        names = [
            "transfer",
            "target_prob",
            "plausibility",
            "spectral_gap",
            "colour_distance",
            "diversity_vs_real",
        ]
        names += [] if key == "real" else ["render_seconds", "test_accuracy"]
        for name in names:
            assert math.isfinite(row[name]), (key, name, row[name])
        assert 0 <= row["transfer"] <= 1 and 0 < row["target_prob"] < 1
    # Real test images against other real test images: far closer in colour and spectrum than 2-step renders.
    for key in ("a", "b", "c"):
        assert rows["real"]["colour_distance"] < rows[key]["colour_distance"]
        assert rows["real"]["spectral_gap"] < rows[key]["spectral_gap"]


def test_learned_basis_changes_the_images_and_grey_stays_grey(run):
    renders = torch.load(run["out"] / "renders.pt")
    assert set(renders) == {"a", "b", "c", "grey"}
    for rgb in renders.values():
        assert rgb.shape == (10, PER_CLASS, 3, 32, 32)
        assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    # Same seed and settings; only the colour basis differs.
    assert float((renders["a"] - renders["b"]).abs().mean()) > 0.01
    grey = renders["grey"]
    assert torch.equal(grey[:, :, 0], grey[:, :, 1]) and torch.equal(grey[:, :, 0], grey[:, :, 2])
    assert float(grey.std()) > 0
    # Phase-only pictures keep training images' spectra: after one step from the small start they carry more
    # contrast than the 1/f^1.25 ones in the same basis (1.5x, where the colour prior also raises the latter's).
    assert float(renders["c"].std(dim=(-2, -1)).mean()) > 1.5 * float(renders["b"].std(dim=(-2, -1)).mean())
    # The sheet: 4 groups of PER_CLASS tiles (96 px at scale 3) plus three blank columns, classes down.
    sheet = load_png(run["out"] / "reuse_sheet.png")
    tiles = 4 * PER_CLASS + 3
    assert sheet.shape[-1] > tiles * 96 and sheet.shape[-2] > 10 * 96


def test_rerun_restores_the_cached_models(run, tmp_path, capsys):
    checkpoints = sorted(path.name for path in run["out"].glob("*.ckpt"))
    assert [name.split("_")[0] for name in checkpoints] == ["grey", "rgb"]
    out = tmp_path / "out"
    out.mkdir()
    for path in run["out"].glob("rgb_*"):  # the cached RGB model: checkpoint and record
        shutil.copy(path, out / path.name)
    capsys.readouterr()
    result = reuse.main(
        ["--data-dir", str(run["data"]), "--out", str(out), "--epochs", "1", "--grey-epochs", "0", *FAST]
    )
    assert "rgb model: restored" in capsys.readouterr().out
    assert result["models"]["rgb"] == run["result"]["models"]["rgb"]
    assert set(result["rows"]) == {"real", "a", "b", "c"}
    # Same seed, same restored weights: the same images, the learned basis included.
    first, again = torch.load(run["out"] / "renders.pt"), torch.load(out / "renders.pt")
    assert set(again) == {"a", "b", "c"}
    for key in again:  # the phase-only render's training images too: their read is seeded
        assert torch.equal(first[key], again[key]), key


def test_table_without_references_has_no_reference_columns():
    rows = {
        "real": {"spectral_gap": 0.02, "colour_distance": 0.01},
        "a": {"spectral_gap": 0.5, "colour_distance": 0.2, "render_seconds": 12.0, "test_accuracy": 0.8},
    }
    lines = reuse.format_table(rows).splitlines()
    assert "transfer" not in lines[0] and "plausibility" not in lines[0]
    assert lines[2].startswith("| real test images | - | 0.020 | 0.010 | - |")
    assert lines[3] == "| (a) normalisation only | 0.800 | 0.500 | 0.200 | 12 |"


def test_real_sample_is_per_class_and_names_a_short_class():
    labels = torch.arange(10).repeat(5)
    chosen = reuse.real_sample(labels, 4, seed=0)
    assert chosen.shape == (10, 4)
    assert torch.equal(labels[chosen], torch.arange(10)[:, None].expand(10, 4))
    assert len(set(chosen.flatten().tolist())) == 40
    with pytest.raises(ValueError, match=r"fewer than 6 images of class\(es\) \[0, 1"):
        reuse.real_sample(labels, 6, seed=0)
