"""The ``featvis`` LightningCLI: fit/validate/test on synthetic data, help text, TensorBoard output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from helpers import read_events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from featvis import CIFARDataModule, FeatureVisCallback, RenderConfig
from featvis.cli import FeatvisCLI, main
from featvis.engine import resolve_autocast
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
    # 16 render steps, not 128: the default net's renders (classes and channel sheets) are most of this test's
    # time on one thread, and the steps are not what it checks.
    cli = main(
        [
            "fit",
            *_common(cifar_dir, log_dir),
            "--trainer.max_epochs",
            "1",
            "--trainer.log_every_n_steps",
            "1",
            "--featvis.config.steps",
            "16",
        ]
    )

    version_dir = log_dir / "cifar10" / "version_0"
    checkpoint = version_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert (version_dir / "checkpoints" / "epoch00.ckpt").is_file()
    assert (version_dir / "config.yaml").is_file()
    scalars = _scalars(version_dir)
    assert {"train/loss", "train/acc", "val/loss", "val/acc_1view"} <= set(scalars)
    assert len(scalars["val/acc_1view"]) == 1 and 0.0 <= scalars["val/acc_1view"][0] <= 1.0
    assert 0.0 <= scalars["train/acc"][0] <= 1.0
    # The default config's channel sheet: the last spatial block of SpeedNet, chosen by layer "auto", logged
    # beside the class render (before training and after the epoch), with the purity of its channels' top
    # examples.
    events = read_events(version_dir)
    assert [s for s, *_ in events["images"]["featvis/channels/net.group3"]] == [0, len(scalars["train/loss"])]
    assert 0.0 <= scalars["featvis/channels/net.group3/purity"][0] <= 1.0
    assert (version_dir / "featvis" / "epoch_001" / "channels" / "net.group3.png").is_file()
    assert len(scalars["train/loss"]) == 100 // 16 and all(v > 0 for v in scalars["train/loss"])
    fit_val_acc = float(cli.trainer.callback_metrics["val/acc_1view"])
    assert fit_val_acc == pytest.approx(scalars["val/acc_1view"][0], abs=1e-6)
    # The config was applied: bf16 autocast (float32 where the CPU would emulate bf16), the default network, and
    # the linked number of classes.
    fast_bf16 = resolve_autocast("auto", torch.device("cpu"), torch.float32) is not None
    assert cli.trainer.precision == ("bf16-mixed" if fast_bf16 or torch.cuda.is_available() else "32-true")
    assert cli.model.hparams.network == "speednet" and cli.model.hparams.num_classes == 10
    config = yaml.safe_load(Path(CONFIG).read_text())
    for key in ("lr", "widths", "tta", "bias_lr_scale"):
        assert cli.model.hparams[key] == config["model"][key], key

    module = load_classifier(str(checkpoint))
    assert module.class_names == CLASS_NAMES
    assert torch.equal(module.colour.matrix, cli.datamodule.colour.matrix)

    validated = main(["validate", *_common(cifar_dir, log_dir), "--ckpt_path", str(checkpoint)])
    val_acc = float(validated.trainer.callback_metrics["val/acc_1view"])
    assert 0.0 <= val_acc <= 1.0
    # The same weights on the same (test) split give the accuracy logged at the end of fit.
    assert val_acc == pytest.approx(fit_val_acc, abs=1e-6)

    tested = main(["test", *_common(cifar_dir, log_dir), "--ckpt_path", str(checkpoint)])
    assert set(tested.trainer.callback_metrics) == {"test/acc"}
    fit_test_acc = float(cli.trainer.callback_metrics["test/acc"])  # the full TTA at the end of fit
    assert float(tested.trainer.callback_metrics["test/acc"]) == pytest.approx(fit_test_acc, abs=1e-6)
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


def _fails_with(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(args)``, expect exit status 2 and return the one line it printed last on stderr."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_missing_data_without_download_fails_with_the_fixes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    line = _fails_with(["fit", *_common(missing, tmp_path / "logs"), "--trainer.max_epochs", "1"], capsys)
    assert line.startswith(
        f"featvis fit: error: CIFAR-10 folder {missing / 'cifar-10-batches-py'} not found."
    )
    assert "--data.data_dir" in line and "--data.download true" in line


def test_corrupt_batch_file_is_one_line(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    line = _fails_with(["fit", *_common(cifar_dir, tmp_path / "logs"), "--trainer.max_epochs", "1"], capsys)
    assert line.startswith(f"featvis fit: error: CIFAR-10 batch file {batch} is truncated or corrupt (")
    assert line.endswith(f"Replace it with an intact copy, or delete {batch.parent} and download again.")


@pytest.mark.parametrize("kind", ["plain_state_dict", "missing"])
def test_a_reference_model_that_is_no_lightning_checkpoint_is_one_line_before_training(
    kind: str, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = tmp_path / "ref.pt"
    if kind == "plain_state_dict":  # e.g. torch.save(model.state_dict()) of a plain PyTorch classifier
        torch.save({"weight": torch.zeros(2)}, reference)
    log_dir = tmp_path / "logs"
    args = ["--trainer.max_epochs", "1", "--featvis.reference_model", str(reference)]
    line = _fails_with(["fit", *_common(cifar_dir, log_dir), *args], capsys)
    expected = {
        "plain_state_dict": f"cannot load checkpoint {reference}: it is not a Lightning checkpoint (it lacks "
        "'pytorch-lightning_version', 'state_dict'); pass the .ckpt written by featvis fit.",
        "missing": f"checkpoint {reference} does not exist; pass the .ckpt written by featvis fit.",
    }[kind]
    assert line == f"featvis fit: error: {expected}"
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("epoch_*"))


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--data.batch_size", "-5"], None, "data.batch_size must be an integer >= 1, got -5."),
        (["--featvis.config.steps", "-4"], None, "featvis.config.steps must be an integer >= 0, got -4."),
        ([], {"featvis": {"config": {"steps": -4}}}, "featvis.config.steps must be an integer >= 0, got -4."),
        (["--featvis.every_n_epochs", "0"], None, "featvis.every_n_epochs must be an integer >= 1, got 0."),
        (["--model.lr", "-1"], None, "model.lr must be positive, got -1.0."),
        (
            [],
            {
                "trainer": {
                    "callbacks": [
                        {
                            "class_path": "featvis.FeatureVisCallback",
                            "init_args": {"prefix": "extra", "config": {"steps": -4}},
                        }
                    ]
                }
            },
            "trainer.callbacks[FeatureVisCallback].config.steps must be an integer >= 0, got -4.",
        ),
        (
            [],
            {"trainer": {"callbacks": [{"class_path": "featvis.FeatureVisCallback"}]}},
            "trainer.callbacks lists a FeatureVisCallback with prefix 'featvis', which featvis already adds from its "
            "featvis: section; move that entry's init_args to featvis: in the config (--featvis.<arg> on the command "
            "line), or give it another prefix.",
        ),
        (["--featvis.targets", "[kat]"], None, "unknown class 'kat'; valid names: "),
    ],
    ids=[
        "data",
        "render-flag",
        "render-config",
        "callback",
        "model",
        "listed-callback",
        "duplicate",
        "class",
    ],
)
def test_bad_values_print_one_line_and_exit_2_before_training(
    args: list[str],
    config: dict | None,
    message: str,
    cifar_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if config is not None:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
        args = [*args, "--config", str(tmp_path / "bad.yaml")]
    log_dir = tmp_path / "logs"
    line = _fails_with(["fit", *_common(cifar_dir, log_dir), "--trainer.max_epochs", "1", *args], capsys)
    assert line.startswith(f"featvis fit: error: {message}")
    # Nothing trained: no checkpoint and no rendered epoch.
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("epoch_*"))


def test_failed_download_is_one_line_naming_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # a closed local port: no network needed
    monkeypatch.setattr("featvis.cifar.CIFAR10_URL", url)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [*_common(empty, tmp_path / "logs"), "--data.download", "true", "--trainer.max_epochs", "1"]
    line = _fails_with(["fit", *args], capsys)
    assert line.startswith(f"featvis fit: error: CIFAR-10 download from {url} failed (")
    assert "--data.data_dir" in line and "--data.download false" in line
    assert list(empty.iterdir()) == []  # no partial archive


def _tiny(data_dir: Path, log_dir: Path) -> list[str]:
    """The default config on the tiny synthetic folder, cut down to seconds: a small net, 2 batches, 2 steps."""
    return [
        *_common(data_dir, log_dir),
        "--model.widths",
        "[8, 8, 8]",
        "--trainer.precision",
        "32-true",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--featvis.config.steps",
        "2",
        "--featvis.config.images_per_target",
        "1",
        "--featvis.sheets.k",
        "4",  # the default config's channel sheet, of the 8 channels this net's last block has
    ]


def _epochs(version_dir: Path) -> list[str]:
    return sorted(p.name for p in (version_dir / "featvis").glob("epoch_*"))


def test_no_logger_writes_pngs_only(cifar_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    args = [*_tiny(cifar_dir, tmp_path / "logs"), "--trainer.max_epochs", "1"]
    cli = main(["fit", *args, "--trainer.logger", "false", "--trainer.default_root_dir", str(root)])
    assert cli is not None and not cli.trainer.loggers
    # The default config's LearningRateMonitor (which needs a logger) was dropped, the callback kept.
    assert [type(c).__name__ for c in cli.trainer.callbacks if "Monitor" in type(c).__name__] == []
    assert _epochs(root) == ["epoch_000", "epoch_001"]
    pngs = sorted(
        str(p.relative_to(root / "featvis" / "epoch_001"))
        for p in (root / "featvis" / "epoch_001").rglob("*.png")
    )
    # One image per class, and the default config's channel sheet.
    assert [p for p in pngs if not p.startswith("channels/")] == sorted(f"{c}/0.png" for c in CLASS_NAMES)
    assert [p for p in pngs if p.startswith("channels/")] == ["channels/net.group3.png"]
    assert (root / "featvis" / "timeline.png").is_file()
    assert not (tmp_path / "logs").exists() and not list(root.rglob("events.out.tfevents.*"))


def test_featvis_arguments_reach_the_callback(tmp_path: Path) -> None:
    (tmp_path / "featvis.yaml").write_text("featvis:\n  config:\n    lr: 0.01\n")
    cli = FeatvisCLI(
        ClassifierModule,
        CIFARDataModule,
        run=False,
        args=[
            "--config",
            CONFIG,
            "--config",
            str(tmp_path / "featvis.yaml"),
            "--featvis.config.steps",
            "3",
            "--featvis.every_n_epochs",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "logs"),
        ],
    )
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, FeatureVisCallback)]
    assert len(callbacks) == 1
    # The default config's diversity term, the extra file's lr and the command line's steps, all merged.
    expected = RenderConfig(steps=3, lr=0.01, diversity_layer="net.group2", diversity_weight=4.0)
    assert callbacks[0].config == expected
    assert callbacks[0].every_n_epochs == 2


def test_resume_continues_in_the_checkpoints_run_folder(cifar_dir: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    args = _tiny(cifar_dir, log_dir)
    main(["fit", *args, "--trainer.max_epochs", "1"])
    run = log_dir / "cifar10" / "version_0"
    assert _epochs(run) == ["epoch_000", "epoch_001"]

    main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    # One run: the same version folder, TensorBoard run (both event files in it) and PNG tree.
    assert sorted(p.name for p in (log_dir / "cifar10").iterdir()) == ["version_0"]
    assert _epochs(run) == ["epoch_000", "epoch_001", "epoch_002"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    assert len(_scalars(run)["val/acc_1view"]) == 2
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"epoch01.ckpt", "last.ckpt"}  # save_top_k=1

    # The opt-out logs into a new version.
    main(
        [
            "fit",
            *args,
            "--trainer.max_epochs",
            "3",
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
            "--resume_new_version",
            "true",
        ]
    )
    assert sorted(p.name for p in (log_dir / "cifar10").iterdir()) == ["version_0", "version_1"]
    assert _epochs(log_dir / "cifar10" / "version_1") == ["epoch_003"]
    assert _epochs(run) == ["epoch_000", "epoch_001", "epoch_002"]


def test_help_names_render(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "featvis render --ckpt CKPT --out OUT" in text
    assert "render a trained checkpoint into PNG files with `featvis render --ckpt FILE --out DIR`" in text


def test_python_m_featvis_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "featvis", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: featvis" in result.stdout
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout
    text = " ".join(result.stdout.split())
    assert (
        "featvis render --ckpt CKPT --out OUT" in text and "`featvis render --help` lists its options" in text
    )


@pytest.mark.slow
def test_default_recipe_reaches_75_percent_in_two_epochs(real_cifar_dir: Path, tmp_path: Path) -> None:
    # The default config's recipe, schedule squeezed into 2 epochs, at the airbench94 net's widths
    # (configs/cifar10_speedrun.yaml): the default's wider net costs 1.8x per step on a CPU
    # (benchmarks.step_cost). Two full epochs of training, evaluated (1 view per epoch, 6 views at the end of
    # fit) on the first 2,000 test images: on an AVX2-only CPU the full 10,000 made this test 31 minutes and
    # .ci/run about 53, over its 45. Everything else is the default config's.
    log_dir = tmp_path / "logs"
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--config",
            str(REPO / "configs" / "cifar10_speedrun.yaml"),
            "--data.data_dir",
            str(real_cifar_dir),
            "--data.download",
            "false",
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(log_dir),
        ]
    )
    # The full 6-view TTA at the end of fit: the number the 75% has always been measured with.
    test_acc = float(cli.trainer.callback_metrics["test/acc"])
    assert test_acc >= 0.75, test_acc
    run = log_dir / "cifar10_speedrun" / "version_0"
    scalars = _scalars(run)
    assert len(scalars["val/acc_1view"]) == 2 and scalars["test/acc"] == [pytest.approx(test_acc, abs=1e-6)]
    assert 0.5 < scalars["val/acc_1view"][-1] <= test_acc + 0.02  # one view: a little below the TTA
    module = load_classifier(str(run / "checkpoints" / "last.ckpt"))
    assert module.hparams["lookahead"] and module.hparams["widths"] == [64, 256, 256]
    assert module.class_names == CLASS_NAMES


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        (
            "cifar10_wide.yaml",
            {"widths": [128, 384, 384], "val_tta": "flip", "lookahead": False, "stem_bias_epochs": None},
        ),
        ("cifar10_small_cnn.yaml", {"network": "small_cnn", "widths": None, "tta": "flip"}),
        ("cifar10_speedrun.yaml", {"widths": [64, 256, 256], "lookahead": True, "batchnorm_momentum": 0.4}),
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
    # The callback keeps the default config's settings: its own defaults plus channel sheets at SheetConfig's
    # defaults and the diversity term, whose layer only the small CNN's overlay renames (its net has no group2).
    assert default["featvis"]["sheets"] == {} and merged["featvis"]["every_n_epochs"] == 1
    diversity = dict(default["featvis"]["config"], **layer.get("featvis", {}).get("config", {}))
    assert diversity["diversity_layer"] == ("net.relu3" if "small_cnn" in overlay else "net.group2")
    for key, value in diversity.items():
        assert merged["featvis"]["config"][key] == value, key
    assert (
        merged["featvis"]["config"]["colour_weight"] == RenderConfig.colour_weight
    )  # not named: the default
    assert merged["featvis"]["sheets"]["layers"] == "auto" and merged["featvis"]["sheets"]["k"] == 16
    for section in ("model", "data"):
        for key, value in default[section].items():
            if key not in layer.get(section, {}):
                assert merged[section][key] == value, f"{section}.{key}"
    assert merged["trainer"]["logger"]["init_args"]["name"] == Path(overlay).stem
    # The merged model section builds (its values pass ClassifierModule's checks).
    model = ClassifierModule(**merged["model"])
    for key, value in expected.items():
        assert model.hparams[key] == value, key


@pytest.mark.parametrize(("fast_bf16", "expected"), [(False, "32-true"), (True, "bf16-mixed")])
def test_bf16_config_trains_in_float32_on_a_cpu_without_native_bf16(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_bf16: bool, expected: str
) -> None:
    import featvis.engine.config as config_module

    monkeypatch.setattr(config_module, "_cpu_has_fast_bf16", lambda: fast_bf16)
    args = [
        *_common(cifar_dir, tmp_path / "logs"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
    ]
    cli = FeatvisCLI(
        ClassifierModule, CIFARDataModule, args=args, run=False, parser_kwargs={"prog": "featvis"}
    )
    assert cli.config["trainer"]["precision"] == expected
    assert cli.trainer.precision == expected
