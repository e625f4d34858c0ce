"""Reference classifiers and the quality benchmark CLI, on tiny synthetic CIFAR-format data."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_cifar_folder

import benchmarks.ablation as ablation
import benchmarks.colour as colour_study
import benchmarks.common as common
import benchmarks.quality as quality
import featvis.engine.spectrum
from benchmarks.reference_models import (
    ARCHITECTURES,
    build_reference,
    cifar_folder,
    evaluate,
    load_reference,
    train_reference,
)
from featvis.checkpoints import CheckpointError
from featvis.cifar import read_class_names, read_split
from featvis.engine import RenderConfig
from featvis.hidden import SheetConfig
from featvis.images import load_png, write_image_folder
from featvis.quality import penultimate_features, reference_spectrum

REPO = Path(__file__).resolve().parents[2]
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
    with pytest.raises(FileNotFoundError, match="benchmarks.quality train"):
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


# The data, reference models and checkpoint below are read-only inputs, made once for the module.


@pytest.fixture(scope="module")
def bigger_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic CIFAR data with 150 test images (about 15 per class), enough for k-nearest neighbours."""
    root = tmp_path_factory.mktemp("data")
    write_cifar_folder(root, per_batch=150, seed=1)
    return root


@pytest.fixture(scope="module")
def ref_paths(bigger_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two tiny reference models trained for one epoch."""
    folder = tmp_path_factory.mktemp("ref")
    paths = []
    for arch, seed in (("preact_resnet", 0), ("vgg_avg", 1)):
        path = folder / f"{arch}_seed{seed}.pt"
        train_reference(arch, seed, bigger_cifar, 1, path, batch_size=100, widths=TINY, log=None)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def tiny_ckpt(bigger_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A featvis ClassifierModule checkpoint after two training steps on the synthetic data."""
    import lightning as L

    from featvis.data import CIFARDataModule
    from featvis.model import ClassifierModule

    root = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0)
    model = ClassifierModule(widths=[4, 8], channels_last=False)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=root)
    trainer.fit(model, CIFARDataModule(data_dir=str(bigger_cifar), batch_size=50, download=False))
    trainer.save_checkpoint(root / "tiny.ckpt")
    return root / "tiny.ckpt"


def test_cli_score_of_real_images_matches_each_references_own_accuracy(
    bigger_cifar, ref_paths, tmp_path, capsys
):
    folder = cifar_folder(bigger_cifar)
    names = read_class_names(folder)
    images, labels = read_split(folder, train=False)
    # Two test images of each class, written as PNGs (lossless for uint8 images) in the folders of their class.
    chosen = torch.stack([torch.nonzero(labels == c).flatten()[:2] for c in range(10)])  # (classes, 2)
    write_image_folder(images[chosen].float() / 255, names, tmp_path / "vis")

    out = tmp_path / "score.json"
    args = ["score", "--pngs", str(tmp_path / "vis"), "--refs", *ref_paths, "--data-dir", str(bigger_cifar)]
    result = quality.main([*args, "--k", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "preact_resnet_seed0" in printed and "spectral gap vs test set" in printed
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["images"] == 20
    assert (
        set(result["transfer"])
        == set(result["plausibility"])
        == {"preact_resnet_seed0", "vgg_avg_seed1", "mean"}
    )
    # Transfer accuracy is each reference's own accuracy on exactly these images under their folder's class.
    for path in ref_paths:
        model, info = load_reference(path)
        name = Path(path).stem
        expected = evaluate(model, images[chosen.flatten()], labels[chosen.flatten()])
        assert result["transfer"][name] == pytest.approx(expected)
        assert result["reference_test_accuracy"][name] == pytest.approx(info["test_accuracy"])
    assert result["transfer"]["mean"] == pytest.approx(
        sum(result["transfer"][Path(p).stem] for p in ref_paths) / 2
    )
    # Real test images scored against the test set they come from: a small gap, plausible features.
    assert 0.0 <= result["spectral_gap"] < 0.2
    assert 0.3 < result["plausibility"]["mean"] < 2.0
    assert "robustness" not in result and "diversity" not in result


def test_cli_score_real_separates_real_images_from_noise(bigger_cifar, ref_paths):
    args = [
        "score-real",
        "--refs",
        *ref_paths,
        "--data-dir",
        str(bigger_cifar),
        "--k",
        "3",
        "--per-class",
        "2",
    ]
    real = quality.main(args)
    assert set(real) == {"real", "uniform_noise"}
    assert real["real"]["images"] == real["uniform_noise"]["images"] == 20
    # Noise is far from the real spectrum and from real features; real images (left out of the reference set)
    # are close to other real images.
    assert real["real"]["spectral_gap"] < real["uniform_noise"]["spectral_gap"]
    assert 0.5 < real["real"]["plausibility"]["mean"] < 2.0
    assert real["uniform_noise"]["plausibility"]["mean"] > real["real"]["plausibility"]["mean"]


def test_cli_frontier_ranks_each_class_by_the_references_own_probability(bigger_cifar, ref_paths, tmp_path):
    folder = cifar_folder(bigger_cifar)
    images, labels = read_split(folder, train=False)
    smallest = int(torch.bincount(labels).min())
    out = tmp_path / "frontier.json"
    args = [
        "frontier",
        "--refs",
        ref_paths[0],
        "--data-dir",
        str(bigger_cifar),
        "--per-class",
        "2",
        str(smallest),
    ]
    result = quality.main([*args, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (entry,) = result.values()
    model, _ = load_reference(ref_paths[0])
    assert entry["accuracy"] == pytest.approx(evaluate(model, images, labels))
    surest, every = entry["rows"]
    assert (surest["per_class"], every["per_class"]) == (2, smallest)
    # Each class's two surest images: at least as sure on average as the class's `smallest` surest.
    assert surest["mean_target_prob"] >= every["mean_target_prob"]
    assert surest["min_target_prob"] >= every["min_target_prob"]
    assert surest["diversity_vs_real"] >= 0.0 and 0.5 < every["diversity_vs_real"] < 1.5


def test_cli_score_with_ckpt_measures_diversity_within_each_class(
    bigger_cifar, ref_paths, tiny_ckpt, tmp_path
):
    names = read_class_names(cifar_folder(bigger_cifar))
    generator = torch.Generator().manual_seed(0)
    varied = torch.rand(10, 2, 3, 32, 32, generator=generator)
    alike = torch.rand(10, 1, 3, 32, 32, generator=generator).expand(10, 2, 3, 32, 32)
    scores = {}
    for kind, rgb in (("varied", varied), ("alike", alike)):
        write_image_folder(rgb, names, tmp_path / kind)
        args = [
            "score",
            "--pngs",
            str(tmp_path / kind),
            "--refs",
            *ref_paths,
            "--data-dir",
            str(bigger_cifar),
        ]
        scores[kind] = quality.main([*args, "--k", "3", "--ckpt", str(tiny_ckpt)])
    for result in scores.values():
        assert 0.0 <= result["robustness"] <= 1.0
    # Two copies of one image per class: no diversity within any class, whatever differs between classes.
    assert scores["alike"]["diversity"] == pytest.approx(0.0, abs=1e-5)
    assert scores["varied"]["diversity"] > 1e-3


def test_cli_score_run_scores_each_epoch_folder_like_score_and_skips_channel_sheets(
    bigger_cifar, ref_paths, tmp_path, capsys
):
    folder = cifar_folder(bigger_cifar)
    names = read_class_names(folder)
    images, labels = read_split(folder, train=False)
    chosen = torch.stack([torch.nonzero(labels == c).flatten()[:2] for c in range(10)])
    real = images[chosen].float() / 255  # (10, 2, 3, 32, 32)
    noise = torch.rand(10, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    run = tmp_path / "run"
    write_image_folder(noise, names, run / "featvis" / "epoch_000")
    write_image_folder(real, names, run / "featvis" / "epoch_002")
    (run / "featvis" / "epoch_002" / "channels").mkdir()
    torch.save({}, run / "featvis" / "epoch_002" / "channels" / "not_an_image.pt")  # no PNG, and not a class
    write_image_folder(real, names, tmp_path / "alone")
    common_args = ["--refs", *ref_paths, "--data-dir", str(bigger_cifar), "--k", "3"]

    per_epoch = quality.main(["score-run", "--run", str(run), *common_args])
    alone = quality.main(["score", "--pngs", str(tmp_path / "alone"), *common_args])
    printed = capsys.readouterr().out
    assert list(per_epoch) == ["epoch_000", "epoch_002"]
    assert per_epoch["epoch_002"] == alone  # the same numbers as scoring the folder on its own
    assert "| 2 | " in printed and "| 0 | " in printed
    # The references' probability of the intended class, averaged over references and images, by hand.
    probs = []
    for path in ref_paths:
        model, _ = load_reference(path)
        with torch.no_grad():
            p = model(real.flatten(0, 1)).softmax(1)
        probs.append(p[torch.arange(20), torch.arange(10).repeat_interleave(2)].mean())
    assert alone["target_prob"] == pytest.approx(float(torch.stack(probs).mean()), abs=1e-6)
    with pytest.raises(FileNotFoundError, match="no epoch_<NNN> folders"):
        quality.main(["score-run", "--run", str(tmp_path / "alone"), *common_args])
    # Two runs (the same renders twice): each run's numbers, and their mean per epoch.
    both = quality.main(["score-run", "--run", str(run), str(run / "featvis"), *common_args])
    assert both["runs"] == [per_epoch, per_epoch]
    assert both["mean"]["epoch_002"]["target_prob"] == pytest.approx(alone["target_prob"])
    assert both["mean"]["epoch_002"]["plausibility"]["mean"] == pytest.approx(alone["plausibility"]["mean"])
    assert both["last_against_best"] == {}  # one trained epoch: nothing to compare the last one with


def test_as_render_groups_equal_classes_into_rows():
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    rgb, classes = quality.as_render(images, torch.tensor([4, 4, 1, 1, 7, 7]))
    assert rgb.shape == (3, 2, 3, 2, 2) and classes == [1, 4, 7]
    assert rgb[:, :, 0, 0, 0].tolist() == [[2.0, 3.0], [0.0, 1.0], [4.0, 5.0]]
    # Unequal counts: one row per image, in the given order.
    rgb, classes = quality.as_render(images, torch.tensor([4, 4, 4, 1, 1, 7]))
    assert rgb.shape == (6, 1, 3, 2, 2) and classes == [4, 4, 4, 1, 1, 7]


def test_callback_args_reads_the_config_block_and_tolerates_its_absence(tmp_path):
    entry = {"class_path": "featvis.FeatureVisCallback"}
    plain = common.callback_args({"trainer": {"callbacks": [entry]}})
    assert plain == {"config": RenderConfig()}
    custom = {**entry, "init_args": {"every_n_epochs": 2, "config": {"steps": 7, "autocast": "none"}}}
    args = common.callback_args({"trainer": {"callbacks": [{"class_path": "x.Other"}, custom]}})
    assert args["every_n_epochs"] == 2
    assert args["config"] == RenderConfig(steps=7, autocast="none")
    assert common.callback_args({"featvis": {"config": {"steps": 5}}}) == {"config": RenderConfig(steps=5)}
    assert common.callback_args({"featvis": None}) == {"config": RenderConfig()}
    sheets = common.callback_args({"featvis": {"sheets": {"layers": "auto", "k": 4}}})["sheets"]
    assert sheets == SheetConfig(layers="auto", k=4) and sheets.layers == ("auto",)
    with pytest.raises(ValueError, match="no featvis section and no FeatureVisCallback"):
        common.callback_args({"trainer": {"callbacks": [{"class_path": "x.Other"}]}})
    with pytest.raises(ValueError, match="steps"):
        common.callback_args({"trainer": {"callbacks": [{**entry, "init_args": {"config": {"steps": -1}}}]}})
    # The repository's own config makes a working callback.
    from featvis.callback import FeatureVisCallback

    config = common.load_config()
    callback = FeatureVisCallback(**common.callback_args(config))
    assert isinstance(callback.config, RenderConfig)
    assert config["data"]["batch_size"] >= 1


def test_write_json_and_run_script_exit_code(tmp_path, capsys):
    common.write_json({"b": 1, "a": [0.5]}, tmp_path / "sub" / "out.json")
    assert json.loads((tmp_path / "sub" / "out.json").read_text()) == {"a": [0.5], "b": 1}
    common.write_json({"a": 1}, None)  # writes nothing

    def bad() -> None:
        raise FileNotFoundError("no such data")

    with pytest.raises(SystemExit) as info:
        common.run_script(bad)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: no such data"


def test_module_runs_from_the_repository_root_and_reports_user_errors(tmp_path):
    command = [sys.executable, "-m", "benchmarks.quality", "score", "--pngs", str(tmp_path / "none")]
    done = subprocess.run([*command, "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "cifar-10-batches-py" in done.stderr


def test_ablation_renders_every_variant_and_scores_it(bigger_cifar, ref_paths, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "ablation.json"
    args = ["--ckpt", str(tiny_ckpt), "--refs", *ref_paths, "--data-dir", str(bigger_cifar), "--steps", "4"]
    args += ["--images-per-target", "2", "--k", "3", "--diversity-layer", "net.group1"]
    rows = ablation.main([*args, "--json", str(out)])
    printed = capsys.readouterr().out
    assert [row["name"] for row in rows] == [name for name, _ in ablation.variants("net.group1", 2.0)]
    assert "| pixel only |" in printed and "| + diversity |" in printed
    saved = json.loads(out.read_text())
    assert saved["steps"] == 4 and saved["rows"][0]["settings"]["augment"] is False
    assert "(10 classes x 2 images, 4 steps" in printed

    def changed(before: dict, after: dict) -> set[str]:
        keys = set(before["settings"]) | set(after["settings"])
        return {key for key in keys if before["settings"].get(key) != after["settings"].get(key)}

    # Each cumulative row changes exactly one ingredient: the settings of consecutive rows differ in one key;
    # each alternative changes one setting of the defaults (row 5).
    cumulative = len(ablation.VARIANTS) + 2  # and the diversity term, as Gram matrices, then as features
    for before, after in zip(rows[:cumulative], rows[1:cumulative], strict=False):
        assert len(changed(before, after)) == 1 or changed(before, after) == {
            "diversity_layer",
            "diversity_weight",
        }
    alternatives = len(ablation.ALTERNATIVES)
    assert [changed(rows[4], row) for row in rows[cumulative : cumulative + alternatives]] == [
        {"parameterisation"},
        {"parameterisation", "phase_spectrum"},
        {"fourier_scale"},
        {"decay"},
        {"decay"},
        {"init_layout"},
        {"init_layout"},
        {"colour_weight"},
    ]
    # The trade-off rows: phase-only pictures with the diversity term at growing weights, acting in every step,
    # then in the first half of the steps only.
    trade = rows[cumulative + alternatives :]
    scales = len(ablation.DIVERSITY_SCALES)
    assert [row["settings"]["diversity_weight"] for row in trade] == [
        2.0 * s for _ in ablation.DIVERSITY_UNTIL for s in ablation.DIVERSITY_SCALES
    ]
    untils = [row["settings"].get("diversity_until", 1.0) for row in trade]
    assert untils == [until for until in ablation.DIVERSITY_UNTIL for _ in ablation.DIVERSITY_SCALES]
    for row, until in zip(trade, untils, strict=True):
        diverse = {"parameterisation", "diversity_layer", "diversity_weight"}
        assert changed(rows[4], row) == diverse | ({"diversity_until"} if until < 1.0 else set())
    assert "| phase-only + diversity term (weight 8, first 50% of the steps) |" in printed
    for row in rows:
        assert 0.0 <= row["transfer"] <= 1.0 and row["spectral_gap"] > 0 and row["seconds"] > 0
        assert 0.0 <= row["robustness"] <= 1.0 and row["colour_distance"] > 0 and row["diversity"] > 0
        # In the references' features, relative to real images' (the tiny references barely tell these apart).
        assert row["diversity_vs_real"] > 0.0 and math.isfinite(row["diversity_vs_real"])
        assert set(row["transfer_per_model"]) == {"preact_resnet_seed0", "vgg_avg_seed1"}
        assert 0.0 < row["target_prob"] < 1.0
    # The diversity term pushes a class's pictures apart: the phase-only pictures in the model's own features,
    # the defaults' in the references' features too.
    assert trade[scales - 1]["diversity"] > 2 * rows[cumulative]["diversity"]
    assert rows[cumulative - 2]["diversity_vs_real"] > 1.5 * rows[4]["diversity_vs_real"]
    # The phase-only row keeps real images' amplitude spectra: its images differ from the 1/f defaults'.
    assert rows[cumulative]["colour_distance"] != rows[4]["colour_distance"]
    assert "| defaults, phase-only spectra of training images |" in printed
    # Fourier images have another spectrum than pixel images from the same start and steps.
    assert rows[2]["spectral_gap"] != rows[1]["spectral_gap"]
    # The data-scaled, the other exponents' and the layout-started Fourier rows differ from the defaults' pictures.
    scaled = rows[cumulative + 2 : cumulative + alternatives]
    assert all(row["colour_distance"] != rows[4]["colour_distance"] for row in scaled)
    assert "| defaults, the plain 1/f spectrum (decay 1) |" in printed

    # "=NAME" picks one row by its whole name, where a word would also pick the phase-only diversity rows.
    sheet = tmp_path / "sheet.png"
    (only,) = ablation.main([*args, "--only", "=+ diversity", "--sheet", str(sheet)])
    assert only["name"] == "+ diversity" and only["settings"] == rows[cumulative - 2]["settings"]
    # The sheet: per class, four real test images, then the row's two pictures, each tile 3x its 32 px.
    assert "r1 = + diversity" in capsys.readouterr().out
    picture = load_png(sheet)
    tile, pad = 96, 2
    bare_height, bare_width = 10 * tile + 11 * pad, 6 * tile + 7 * pad
    assert picture.shape[-2] > bare_height and picture.shape[-1] > bare_width  # the labels' margins
    bare = picture[:, -bare_height:, -bare_width:]
    real, labels, _ = common.real_test_set(bigger_cifar)
    first_real = real[common.first_per_class(labels, 1)[0, 0]]  # the first real image of class 0
    shown = bare[:, pad : pad + tile : 3, pad : pad + tile : 3]
    assert torch.allclose(shown, first_real, atol=1 / 255 + 1e-6)
    # Column 5 holds the row's first picture: not a real image, and different from the first column.
    rendered = bare[:, pad : pad + tile : 3, pad + 4 * (tile + pad) :][:, :, :tile:3]
    assert not torch.allclose(rendered, first_real, atol=0.05)
    assert rows[cumulative - 1]["settings"] == dict(only["settings"], diversity_kind="features")


def test_ablation_set_may_take_training_images(bigger_cifar, tiny_ckpt, capsys):
    # A shared setting that takes training images (the layout start) reaches every row, the warm-up included.
    args = [
        "--ckpt",
        str(tiny_ckpt),
        "--data-dir",
        str(bigger_cifar),
        "--steps",
        "2",
        "--images-per-target",
        "2",
    ]
    only = ["--only", "=+ colour prior (defaults)"]
    (plain,) = ablation.main([*args, *only])
    (layout,) = ablation.main([*args, *only, "--set", "init_layout=1"])
    assert (
        layout["colour_distance"] < plain["colour_distance"]
    )  # each picture starts from a photograph's colours
    assert "init_layout=1" in capsys.readouterr().out


def test_ablation_set_reads_render_settings_and_refuses_unknown_keys():
    assert ablation.settings_of(["lr=0.01", "steps=256", "lr_schedule=constant"]) == {
        "lr": 0.01,
        "steps": 256,
        "lr_schedule": "constant",
    }
    for bad in ("learning_rate=0.1", "lr"):
        with pytest.raises(ValueError, match=f"--set '{bad}': give KEY=VALUE"):
            ablation.settings_of([bad])


def test_ablation_quantise_matches_png_levels():
    rgb = torch.tensor([-0.2, 0.0, 0.5, 0.70001, 1.3])
    assert torch.equal(ablation.quantise(rgb) * 255, torch.tensor([0.0, 0.0, 128.0, 179.0, 255.0]))


def test_colour_study_shows_the_phase_only_rows_contrast_is_the_real_images(
    bigger_cifar, tiny_ckpt, tmp_path, capsys
):
    sheet = tmp_path / "sheet.png"
    args = ["--ckpt", str(tiny_ckpt), "--data-dir", str(bigger_cifar), "--steps", "2", "--sheet", str(sheet)]
    rows = colour_study.main([*args, "--diversity-layer", "net.group1"])
    names = ["real test images", *(name for name, _, _ in colour_study.ROWS)]
    assert [row["name"] for row in rows] == [*names, "phase-only + diversity term (weight 5)"]
    real, prior, default = rows[0], rows[1], rows[2]
    phase = next(row for row in rows if "limit 0.05" in row["name"])
    # Two steps from the small random start: the 1/f images are nearly flat, while phase-only images carry real
    # images' amplitude spectra, so their contrast is of the real images' order.
    assert max(default["contrast"]) < 0.2 * min(real["contrast"])
    # The colour prior (the defaults) pulls the pictures towards real images' colours from the first steps.
    assert prior["colour_distance"] < default["colour_distance"]
    assert min(prior["contrast"]) > max(default["contrast"])
    for ours, theirs in zip(phase["contrast"], real["contrast"], strict=True):
        assert 0.3 * theirs < ours < 3 * theirs
    assert phase["colour_distance"] < default["colour_distance"]
    # Diversity relative to real images: positive and finite (a 2-step model's features hardly tell images apart,
    # so the ratio itself means little here).
    assert all(0.0 < row["diversity_vs_real"] < float("inf") for row in rows[1:])
    assert "| phase-only, limit 0.05 (SPECTRA_LIMIT) |" in capsys.readouterr().out
    assert featvis.engine.spectrum.SPECTRA_LIMIT == 0.05  # the study put the module's limit back
    # The sheet: 10 classes x (4 real, 4 defaults, 4 phase-only, 4 with the diversity term) tiles of 32 px at
    # scale 3, and label margins.
    picture = load_png(sheet)
    assert picture.shape[0] == 3 and 10 * 96 < picture.shape[1] < 10 * 96 + 120
    assert 16 * 96 < picture.shape[2] < 16 * 96 + 200


def test_load_references_reads_a_featvis_checkpoint_through_its_own_input_space(bigger_cifar, tiny_ckpt):
    from featvis.model import load_classifier

    ((name, reference, info),) = common.load_references([str(tiny_ckpt)])
    classifier = load_classifier(str(tiny_ckpt))
    images, _ = read_split(cifar_folder(bigger_cifar), train=False)
    rgb = images[:8].float() / 255
    with torch.no_grad():
        expected = classifier(classifier.colour.to_model(rgb))
        got = reference(rgb)
    assert name == "tiny" and math.isnan(info["test_accuracy"])
    torch.testing.assert_close(got, expected)
    assert not reference.training
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        common.load_references([str(tiny_ckpt.parent / "missing.ckpt")])


def test_references_of_the_same_file_name_keep_apart(tmp_path, tiny_ckpt, bigger_cifar):
    # Two runs' last.ckpt: each reader must count, not the second in place of the first.
    paths = []
    for run in ("run_a", "run_b"):
        (tmp_path / run).mkdir()
        paths.append(shutil.copy(tiny_ckpt, tmp_path / run / "last.ckpt"))
    references = common.load_references([*paths, str(tiny_ckpt)])
    assert [name for name, _, _ in references] == [
        str(tmp_path / "run_a" / "last"),
        str(tmp_path / "run_b" / "last"),
        "tiny",
    ]
    images, labels = read_split(cifar_folder(bigger_cifar), train=False)
    rgb = images.float() / 255
    scores = common.quality_scores(
        rgb[:8].view(4, 2, 3, 32, 32),
        [0, 1, 2, 3],
        references,
        (rgb, labels),
        reference_spectrum(rgb, 32),
        k=2,
    )
    assert len(scores["transfer"]) == 4  # three readers and their mean


def _runs(table: dict[str, list[list[float]]]) -> list[dict[str, dict]]:
    """Per-seed score dicts from ``{measure: [[epoch 1, epoch 2, ...] per seed]}`` (epoch 0 is added, untrained;
    ``diversity_vs_real`` is 0.5 everywhere unless the table gives it)."""
    seeds = len(next(iter(table.values())))
    runs = []
    for seed in range(seeds):
        epochs = len(next(iter(table.values()))[seed])
        run = {
            "epoch_000": {
                "target_prob": 1.0,
                "spectral_gap": 0.0,
                "plausibility": {"mean": 0.0},
                "diversity_vs_real": 0.0,
            }
        }
        for e in range(epochs):
            run[f"epoch_{e + 1:03d}"] = {
                "target_prob": table["target_prob"][seed][e],
                "spectral_gap": table["spectral_gap"][seed][e],
                "plausibility": {"mean": table["plausibility"][seed][e]},
                "diversity_vs_real": table.get("diversity_vs_real", [[0.5] * epochs] * seeds)[seed][e],
            }
        runs.append(run)
    return runs


def test_last_against_best_finds_a_real_lead_in_either_direction_and_ignores_epoch_0():
    flat = [[0.5, 0.5, 0.5]] * 4
    runs = _runs(
        {
            "target_prob": [[0.6, 0.9, 0.8], [0.6, 0.9, 0.8], [0.6, 0.9, 0.8], [0.6, 0.9, 0.8]],
            "spectral_gap": flat,
            "plausibility": [[0.7, 0.6, 0.9], [0.7, 0.6, 0.9], [0.7, 0.6, 0.9], [0.7, 0.6, 0.9]],
        }
    )
    result = quality.last_against_best(runs)
    # Epoch 2 leads by 0.1 on target probability and by 0.3 on plausibility (lower is better), on every seed.
    assert result["target_prob"]["best_epoch"] == 2 and result["target_prob"]["last"] == pytest.approx(0.8)
    assert result["target_prob"]["lead"] == pytest.approx(0.1)
    assert result["target_prob"]["held_out_lead"] == pytest.approx(0.1)
    assert result["target_prob"]["lead_se"] == pytest.approx(0.0, abs=1e-7)
    assert result["plausibility"]["best_epoch"] == 2 and result["plausibility"]["best"] == pytest.approx(0.6)
    assert result["plausibility"]["lead"] == pytest.approx(0.3)
    assert result["plausibility"]["held_out_lead"] == pytest.approx(0.3)
    # All trained epochs equal: the last one is the best (epoch 0's perfect scores do not count).
    assert result["spectral_gap"]["lead"] == 0 and result["spectral_gap"]["held_out_lead"] == 0


def test_last_against_best_held_out_lead_sees_through_a_lucky_epoch():
    # Seeds 0 and 2 favour epoch 1, seeds 1 and 3 epoch 2; on the seeds that did not choose it, neither beats
    # the last epoch. The plain best-of-epochs lead is 0.2; the split-half lead is 0.
    lucky = [[0.9, 0.5, 0.5], [0.5, 0.9, 0.5], [0.9, 0.5, 0.5], [0.5, 0.9, 0.5]]
    runs = _runs({"target_prob": lucky, "spectral_gap": [[0.3] * 3] * 4, "plausibility": [[0.7] * 3] * 4})
    result = quality.last_against_best(runs)["target_prob"]
    assert result["lead"] == pytest.approx(0.2)
    assert result["held_out_lead"] == pytest.approx(0.0)


def test_at_equal_diversity_separates_an_epochs_level_from_its_seeds_diversity():
    # Every picture set scores level(epoch) - 0.2 * diversity on target probability and level + 0.5 * diversity on
    # plausibility. The last epoch's level is the best (0.95 against 0.93 and 0.90), but its seeds drew more
    # diverse pictures, so its plain mean is the lowest and the plain comparison names epoch 1.
    diversity = [[0.3, 0.4, 0.7], [0.5, 0.6, 0.9], [0.4, 0.5, 0.8]]
    levels = [0.93, 0.90, 0.95]
    target = [[lv - 0.2 * d for lv, d in zip(levels, seed, strict=True)] for seed in diversity]
    plaus = [[0.8 - lv + 0.5 * d for lv, d in zip(levels, seed, strict=True)] for seed in diversity]
    runs = _runs(
        {
            "target_prob": target,
            "spectral_gap": [[0.25, 0.2, 0.3]] * 3,
            "plausibility": plaus,
            "diversity_vs_real": diversity,
        }
    )
    plain = quality.last_against_best(runs)
    assert plain["target_prob"]["best_epoch"] == 1 and plain["target_prob"]["lead"] > 0.03
    matched = quality.at_equal_diversity(runs)
    for measure, slope in (("target_prob", -0.02), ("plausibility", 0.05)):
        assert matched[measure]["best_epoch"] == 3, measure
        assert matched[measure]["lead"] == pytest.approx(0.0, abs=1e-6)
        assert matched[measure]["per_tenth"] == pytest.approx(slope, rel=1e-4)
        assert abs(matched[measure]["within_r"]) == pytest.approx(1.0, rel=1e-5)
    # Moved to the run's mean diversity (0.5667), the last epoch's target probability is its level less 0.2 x that.
    assert matched["target_prob"]["last"] == pytest.approx(0.95 - 0.2 * 17 / 30, rel=1e-5)
    # A measure that does not move with diversity keeps its plain comparison: epoch 2 has the lowest gap.
    assert matched["spectral_gap"]["best_epoch"] == 2
    assert matched["spectral_gap"]["lead"] == pytest.approx(0.1, rel=1e-5)
    assert matched["spectral_gap"]["per_tenth"] == pytest.approx(0.0, abs=1e-7)
