"""The ``featvis`` LightningCLI: fit/validate/test on synthetic data, help text, TensorBoard output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from featvis.cli import main
from featvis.model import ClassifierModule, load_classifier

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "cifar10.yaml")
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def quiet_cpu(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    """Run in ``tmp_path`` (nothing lands in the checkout) and, for the fast tests, on one thread: tiny
    networks gain nothing from intra-op threads, and on a busy CPU the pool's spinning slows them down badly."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["featvis"])  # main(args) must not see pytest's own arguments
    threads = torch.get_num_threads()
    if request.node.get_closest_marker("slow") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _common(data_dir: Path, log_dir: Path) -> list[str]:
    """Arguments for a quick run of the default config on the tiny synthetic folder."""
    return [
        "--config",
        CONFIG,
        "--data.data_dir",
        str(data_dir),
        "--data.download",
        "false",
        "--data.batch_size",
        "16",
        "--data.eval_batch_size",
        "50",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(log_dir),
    ]


def _scalars(version_dir: Path) -> dict[str, list[float]]:
    events = list(version_dir.glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file in {version_dir}"
    accumulator = EventAccumulator(str(version_dir))
    accumulator.Reload()
    return {tag: [event.value for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_fit_validate_test_on_synthetic_data(cifar_dir: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    cli = main(
        ["fit", *_common(cifar_dir, log_dir), "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"]
    )

    version_dir = log_dir / "cifar10" / "version_0"
    checkpoint = version_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert (version_dir / "checkpoints" / "epoch00.ckpt").is_file()
    assert (version_dir / "config.yaml").is_file()
    scalars = _scalars(version_dir)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(scalars)
    assert len(scalars["val/acc"]) == 1 and 0.0 <= scalars["val/acc"][0] <= 1.0
    assert 0.0 <= scalars["train/acc"][0] <= 1.0
    assert len(scalars["train/loss"]) == 100 // 16 and all(v > 0 for v in scalars["train/loss"])
    fit_val_acc = float(cli.trainer.callback_metrics["val/acc"])
    assert fit_val_acc == pytest.approx(scalars["val/acc"][0], abs=1e-6)
    # The config was applied: bf16 autocast, the default network, and the linked number of classes.
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.model.hparams.network == "speednet" and cli.model.hparams.num_classes == 10
    config = yaml.safe_load(Path(CONFIG).read_text())
    for key in ("lr", "widths", "tta", "bias_lr_scale"):
        assert cli.model.hparams[key] == config["model"][key], key

    module = load_classifier(str(checkpoint))
    assert module.class_names == CLASS_NAMES
    assert torch.equal(module.colour.matrix, cli.datamodule.colour.matrix)

    validated = main(["validate", *_common(cifar_dir, log_dir), "--ckpt_path", str(checkpoint)])
    val_acc = float(validated.trainer.callback_metrics["val/acc"])
    assert 0.0 <= val_acc <= 1.0
    # The same weights on the same (test) split give the accuracy logged at the end of fit.
    assert val_acc == pytest.approx(fit_val_acc, abs=1e-6)

    tested = main(["test", *_common(cifar_dir, log_dir), "--ckpt_path", str(checkpoint)])
    assert set(tested.trainer.callback_metrics) == {"test/acc"}
    assert float(tested.trainer.callback_metrics["test/acc"]) == pytest.approx(fit_val_acc, abs=1e-6)
    # Each run logged into its own version folder.
    assert (log_dir / "cifar10" / "version_2").is_dir()
    # Nothing was written to the working directory (tmp_path) outside the given folders.
    assert {p.name for p in tmp_path.iterdir()} == {"data", "logs"}


def test_fit_help_lists_model_and_data_arguments_with_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for argument in (
        "--model.network",
        "--model.lr",
        "--model.tta",
        "--data.data_dir",
        "--data.val_size",
    ):
        assert argument in text
    # Help text comes from the Google-style docstrings of ClassifierModule and CIFARDataModule.
    assert "peak learning rate (reached after warm-up)" in text
    assert "number of training images held out for validation" in text
    assert "folder that holds (or will hold)" in text
    assert "SGD momentum (Nesterov)" in text


def test_missing_data_without_download_fails_with_the_fixes(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="--data.data_dir"):
        main(["fit", *_common(missing, tmp_path / "logs"), "--trainer.max_epochs", "1"])


def test_python_m_featvis_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "featvis", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: featvis" in result.stdout
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout


@pytest.mark.slow
def test_default_config_reaches_75_percent_in_two_epochs(real_cifar_dir: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.data_dir",
            str(real_cifar_dir),
            "--data.download",
            "false",
            "--trainer.max_epochs",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(log_dir),
        ]
    )
    val_acc = float(cli.trainer.callback_metrics["val/acc"])
    assert val_acc >= 0.75, val_acc
    scalars = _scalars(log_dir / "cifar10" / "version_0")
    assert len(scalars["val/acc"]) == 2 and scalars["val/acc"][-1] == pytest.approx(val_acc, abs=1e-6)
    module = load_classifier(str(log_dir / "cifar10" / "version_0" / "checkpoints" / "last.ckpt"))
    assert module.class_names == CLASS_NAMES


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("cifar10_wide.yaml", {"network": "speednet", "widths": [128, 384, 384], "val_tta": "flip"}),
        ("cifar10_small_cnn.yaml", {"network": "small_cnn", "widths": None, "tta": "flip"}),
    ],
)
def test_overlay_configs_change_only_what_they_name(
    overlay: str, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", CONFIG, "--config", str(REPO / "configs" / overlay), "--print_config"])
    assert info.value.code == 0
    merged = yaml.safe_load(capsys.readouterr().out)
    default = yaml.safe_load(Path(CONFIG).read_text())
    layer = yaml.safe_load((REPO / "configs" / overlay).read_text())
    for key, value in expected.items():
        assert merged["model"][key] == value, key
    # Everything the overlay does not name keeps the default config's value, callbacks included.
    assert [c["class_path"] for c in merged["trainer"]["callbacks"]] == [
        c["class_path"] for c in default["trainer"]["callbacks"]
    ]
    for section in ("model", "data"):
        for key, value in default[section].items():
            if key not in layer.get(section, {}):
                assert merged[section][key] == value, f"{section}.{key}"
    assert merged["trainer"]["logger"]["init_args"]["name"] == Path(overlay).stem
    # The merged model section builds (its values pass ClassifierModule's checks).
    model = ClassifierModule(**merged["model"])
    assert model.hparams.widths == expected["widths"]
