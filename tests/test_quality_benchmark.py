"""Reference classifiers and the quality benchmark CLI, on tiny synthetic CIFAR-format data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `benchmarks` is a folder of scripts, not an installed package

from conftest import write_cifar_folder  # noqa: E402

from benchmarks import quality  # noqa: E402
from benchmarks.reference_models import (  # noqa: E402
    ARCHITECTURES,
    build_reference,
    cifar_folder,
    evaluate,
    load_reference,
    train_reference,
)
from featvis.data import read_class_names, read_split  # noqa: E402
from featvis.engine.metrics import penultimate_features  # noqa: E402
from featvis.images import write_image_folder  # noqa: E402

TINY = (4, 8, 8)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_reference_forward_shapes_and_features(arch):
    model = build_reference(arch, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), widths=TINY).eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = model(images)
    assert logits.shape == (3, 10)
    features = model.features(images)
    assert features.shape == (3, TINY[-1])
    assert torch.allclose(model.head(features), logits, atol=1e-6)
    assert torch.allclose(penultimate_features(model, images), features, atol=1e-6)
    # The input normalisation is part of the saved state, so a loaded model needs no outside statistics.
    state = model.state_dict()
    assert torch.allclose(state["normalise.mean"].flatten(), torch.tensor([0.4, 0.5, 0.6]))
    assert torch.allclose(state["normalise.std"].flatten(), torch.tensor([0.2, 0.25, 0.3]))
    # Average pooling only: the point is an architecture unlike featvis's max-pooling SpeedNet.
    kinds = {type(m).__name__ for m in model.modules()}
    assert "MaxPool2d" not in kinds and "AdaptiveMaxPool2d" not in kinds


def test_build_reference_rejects_unknown_arch_and_bad_stats():
    with pytest.raises(ValueError, match="preact_resnet"):
        build_reference("resnet50")
    with pytest.raises(ValueError, match="std must be positive"):
        build_reference("vgg_avg", std=(0.2, 0.0, 0.2))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_train_reference_one_epoch_writes_loadable_file(cifar_dir, tmp_path, arch):
    out = tmp_path / "ref" / f"{arch}_seed3.pt"
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    lines: list[str] = []
    record = train_reference(
        arch, seed=3, data_dir=cifar_dir, epochs=1, out_path=out, batch_size=32, widths=TINY, log=lines.append
    )
    assert torch.rand(1) == expected_next  # training used private generators only
    assert out.is_file() and not out.with_name(out.name + ".partial").exists()
    assert any("epoch 1/1" in line for line in lines)
    model, info = load_reference(out)
    assert info["arch"] == arch and info["seed"] == 3 and info["widths"] == list(TINY)
    assert info["class_names"][0] == "airplane"
    assert not model.training
    test_images, test_labels = read_split(cifar_folder(cifar_dir), train=False)
    assert info["test_accuracy"] == pytest.approx(evaluate(model, test_images, test_labels))
    assert info["test_accuracy"] == record["test_accuracy"]
    train_images = read_split(cifar_folder(cifar_dir), train=True)[0].float() / 255
    assert torch.allclose(model.normalise.mean.flatten(), train_images.mean(dim=(0, 2, 3)), atol=1e-5)


def test_train_reference_is_reproducible(cifar_dir, tmp_path):
    first = train_reference(
        "vgg_avg", 5, cifar_dir, 1, tmp_path / "a.pt", batch_size=32, widths=TINY, log=None
    )
    second = train_reference(
        "vgg_avg", 5, cifar_dir, 1, tmp_path / "b.pt", batch_size=32, widths=TINY, log=None
    )
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key


def test_train_reference_rejects_bad_arguments(cifar_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown reference architecture"):
        train_reference("speednet", 0, cifar_dir, 1, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="epochs"):
        train_reference("vgg_avg", 0, cifar_dir, 0, tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        train_reference("vgg_avg", 0, tmp_path / "nowhere", 1, tmp_path / "x.pt")


def test_load_reference_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="quality.py train"):
        load_reference(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a reference model"):
        load_reference(tmp_path / "other.pt")


def test_load_png_folder_round_trip_and_errors(tmp_path):
    names = ["airplane", "automobile", "bird"]
    rgb = torch.rand(3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    write_image_folder(rgb, names, tmp_path / "vis")
    images, targets, paths = quality.load_png_folder(tmp_path / "vis", names)
    assert images.shape == (6, 3, 32, 32)
    assert targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(images, rgb.flatten(0, 1), atol=0.5 / 255 + 1e-6)  # 8-bit rounding only
    assert paths[0].endswith("airplane/0.png")
    (tmp_path / "vis" / "zebra").mkdir()
    with pytest.raises(ValueError, match="not named after a class"):
        quality.load_png_folder(tmp_path / "vis", names)
    with pytest.raises(ValueError, match="no PNG"):
        quality.load_png_folder(tmp_path / "vis" / "zebra", names)


@pytest.fixture
def bigger_cifar(tmp_path: Path) -> Path:
    """Synthetic CIFAR data with 150 test images (about 15 per class), enough for k-nearest neighbours."""
    write_cifar_folder(tmp_path / "data", per_batch=150, seed=1)
    return tmp_path / "data"


def test_cli_train_score_and_score_real(bigger_cifar, tmp_path, monkeypatch, capsys):
    refs = []
    for arch, seed in (("preact_resnet", 0), ("vgg_avg", 1)):
        path = tmp_path / "ref" / f"{arch}_seed{seed}.pt"
        train_reference(arch, seed, bigger_cifar, 1, path, batch_size=100, widths=TINY, log=None)
        refs.append(str(path))
    names = read_class_names(cifar_folder(bigger_cifar))
    rgb = torch.rand(10, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    write_image_folder(rgb, names, tmp_path / "vis")

    out = tmp_path / "score.json"
    args = ["score", "--pngs", str(tmp_path / "vis"), "--refs", *refs, "--data-dir", str(bigger_cifar)]
    result = quality.main([*args, "--k", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "preact_resnet_seed0" in printed and "spectral gap" in printed
    assert json.loads(out.read_text())["transfer"] == result["transfer"]
    assert result["images"] == 20
    assert set(result["transfer"]) == {"preact_resnet_seed0", "vgg_avg_seed1", "mean"}
    assert 0.0 <= result["transfer"]["mean"] <= 1.0
    assert result["plausibility"]["mean"] > 0
    assert result["spectral_gap"] > 0

    real = quality.main(
        ["score-real", "--refs", *refs, "--data-dir", str(bigger_cifar), "--k", "3", "--per-class", "1"]
    )
    assert set(real) == {"real", "uniform_noise"}
    assert real["real"]["images"] == 10
    # Synthetic images are flat colours plus white noise, so uniform noise is spectrally close to them; the
    # plausibility of real images stays near 1 (different images, same distribution).
    assert 0.5 < real["real"]["plausibility"]["mean"] < 2.0


def test_ablation_renders_every_variant_and_scores_it(bigger_cifar, tmp_path, capsys):
    import lightning as L

    from benchmarks import ablation
    from featvis.data import CIFARDataModule
    from featvis.model import ClassifierModule

    refs = []
    for arch, seed in (("preact_resnet", 0), ("vgg_avg", 1)):
        path = tmp_path / "ref" / f"{arch}_seed{seed}.pt"
        train_reference(arch, seed, bigger_cifar, 1, path, batch_size=100, widths=TINY, log=None)
        refs.append(str(path))
    L.seed_everything(0)
    model = ClassifierModule(widths=[4, 8], channels_last=False)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, CIFARDataModule(data_dir=str(bigger_cifar), batch_size=50, download=False))
    ckpt = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)

    out = tmp_path / "ablation.json"
    args = ["--ckpt", str(ckpt), "--refs", *refs, "--data-dir", str(bigger_cifar), "--steps", "4", "--k", "3"]
    rows = ablation.main([*args, "--diversity-layer", "net.group1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert [row["name"] for row in rows] == [name for name, _ in ablation.variants("net.group1", 2.0)]
    assert "| pixel only |" in printed and "| + diversity |" in printed
    assert json.loads(out.read_text())["rows"][0]["transforms"] == "none"
    # Each row changes exactly one ingredient: the settings of consecutive rows differ.
    settings = [json.dumps(row["settings"], sort_keys=True) + row["transforms"] for row in rows]
    assert len(set(settings)) == len(rows)
    for row in rows:
        assert 0.0 <= row["transfer"] <= 1.0 and row["spectral_gap"] > 0 and row["seconds"] > 0
    # Fourier images have a smoother spectrum than pixel images from the same start and steps.
    assert rows[2]["spectral_gap"] != rows[1]["spectral_gap"]


def test_ablation_quantise_matches_png_levels():
    from benchmarks.ablation import quantise

    rgb = torch.tensor([-0.2, 0.0, 0.5, 0.70001, 1.3])
    assert torch.equal(quantise(rgb) * 255, torch.tensor([0.0, 0.0, 128.0, 179.0, 255.0]))
