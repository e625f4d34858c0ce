"""The time-to-accuracy benchmark and the GPU check: FLOP counts, the microbenchmark, a featvis smoke run, the
anchor's network and (slow) a smoke run of the anchor itself, and the GPU check's refusal without CUDA."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import FAULTS_SCRIPT, write_cifar_folder
from torch import nn

import benchmarks.gpu_check as gpu_check
import benchmarks.time_to_accuracy as tta
from benchmarks.common import REPO, run_script
from featvis.networks import SpeedNet

ANCHOR = REPO.parent / "shared" / "anchors" / "airbench94_cpu.py"
needs_anchor = pytest.mark.skipif(
    not ANCHOR.is_file(), reason=f"the anchor script {ANCHOR} is not on this machine"
)
# A quick featvis run: tiny nets, a 2-step render of one image per class, no render before training.
SMOKE_FIT = (
    "--featvis.config.steps 2 --featvis.config.images_per_target 1 --featvis.metrics false "
    "--featvis.render_before_training false --trainer.enable_progress_bar false "
    "--trainer.enable_model_summary false"
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny nets gain nothing from intra-op threads, and on a shared CPU spinning threads slow them tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_step_flops_of_a_conv_and_a_linear_layer_equal_the_analytic_count() -> None:
    batch, channels, side, classes = 12, 8, 32, 10
    net = nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(channels * side * side, classes, bias=False),
    )
    conv = 2 * batch * channels * side * side * 3 * 9  # multiply-adds of the forward pass, 2 FLOPs each
    linear = 2 * batch * channels * side * side * classes
    # Backward: the conv needs only its weight gradient (the images need none); the linear layer both.
    assert tta.training_step_flops(net, batch, size=side, probe=4) == 2 * conv + 3 * linear


def test_conv_throughput_counts_the_conv_and_times_it() -> None:
    result = tta.conv_throughput(torch.float32, batch=2, channels=16, size=8, min_seconds=0.05)
    assert result["flops"] == 2 * 2 * 16 * 16 * 8 * 8 * 9
    assert 0 < result["seconds"] < 1.0
    assert result["flop_per_second"] == pytest.approx(result["flops"] / result["seconds"])
    with pytest.raises(ValueError, match="channels=0"):
        tta.conv_throughput(torch.float32, channels=0)


@needs_anchor
def test_anchor_for_a_gpu_is_a_cuda_copy_of_the_cpu_anchor_and_a_copy_runs_as_it_is(tmp_path: Path) -> None:
    assert tta.anchor_for(ANCHOR, torch.device("cpu"), tmp_path) == ANCHOR
    copy = tta.anchor_for(ANCHOR, torch.device("cuda"), tmp_path)
    text = copy.read_text()
    assert copy.parent == tmp_path and 'p.add_argument("--device", default="cuda")' in text
    assert "net = net.to(device=DEV, memory_format=torch.channels_last)" in text
    # The recipe is untouched: every line of the anchor that mentions its hyperparameters survives verbatim.
    recipe = [line for line in ANCHOR.read_text().splitlines() if "hyp" in line]
    assert recipe == [line for line in text.splitlines() if "hyp" in line]
    # A script that takes --device already (such a copy) is run as it is, and its network is counted alike.
    assert tta.anchor_for(copy, torch.device("cuda"), tmp_path / "again") == copy
    flops = [tta.training_step_flops(tta.anchor_network(script)[0], 1) for script in (ANCHOR, copy)]
    assert flops[0] == flops[1] > 0
    changed = tmp_path / "changed.py"
    changed.write_text(ANCHOR.read_text().replace("perm = torch.randperm(len(imgs))", "perm = None"))
    with pytest.raises(RuntimeError, match="could not make a cuda copy of .*changed.py: error: .*randperm"):
        tta.anchor_for(changed, torch.device("cuda"), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu_is_refused_before_any_training(cifar_dir: Path) -> None:
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is available"):
        tta.main(["--data", str(cifar_dir), "--skip-anchor", "--device", "cuda"])


def test_featvis_smoke_run_fills_the_table(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "result.json"
    # A config of the user's that replaces trainer.callbacks (here: keep every epoch's checkpoint) must not drop
    # the benchmark's own timer.
    keep = tmp_path / "keepall.yaml"
    keep.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args:\n        filename: 'kept{epoch}'\n        save_top_k: -1\n"
    )
    result = tta.main(
        [
            "--data", str(cifar_dir), "--skip-anchor", "--epochs", "1", "--max-train-batches", "2",
            "--widths", "8", "16", "16", "--peak-size", "16", "64", "16", "--peak-seconds", "0.2",
            "--fit-args", f"--config {keep} --data.batch_size 20 --data.eval_batch_size 10 {SMOKE_FIT}",
            "--log-dir", str(tmp_path / "logs"), "--json", str(out),
        ]
    )  # fmt: skip
    assert [path.name for path in (tmp_path / "logs").rglob("kept*.ckpt")] == ["keptepoch=0.ckpt"]
    ours = result["featvis"]
    assert ours["epochs"] == 1 and ours["steps"] == [2] and ours["images"] == [40]
    assert ours["accuracy_name"] == "val/acc_1view" and len(ours["accuracy"]) == 1
    assert 0.0 <= ours["accuracy"][0] <= 1.0 and 0.0 <= ours["final_tta_accuracy"] <= 1.0
    assert len(ours["val_seconds"]) == 1 and len(ours["render_seconds"]) == 1
    assert 0 < ours["train_seconds"][0] < ours["epoch_seconds"][0] < ours["wall_seconds"]
    assert ours["steps_per_second"] == pytest.approx(2 / ours["train_seconds"][0])
    # The tiny net's training step, counted on the trained network: its FLOPs, then the fraction of the peak.
    assert ours["flops_per_step"] == tta.training_step_flops(SpeedNet(widths=(8, 16, 16)), 20)
    assert 0.0 < ours["fraction_of_peak"] < 1.5
    assert set(result["peak"]) == {"torch.float32"} or result["machine"]["native_bf16"]
    printed = capsys.readouterr().out
    assert "| featvis fit (callback included) |" in printed and "Peak: 3x3 conv 64->64 on 16x16x16" in printed
    assert result["machine"]["cpu"] in printed
    saved = json.loads(out.read_text())
    assert saved["featvis"]["steps"] == [2] and saved["table"] == result["table"]


def test_missing_anchor_is_refused_before_any_training(cifar_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="anchor script .*missing.py not found"):
        tta.main(["--data", str(cifar_dir), "--anchor", str(tmp_path / "missing.py")])
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py not found"):
        tta.main(["--data", str(tmp_path), "--skip-anchor"])


@needs_anchor
def test_anchor_network_is_the_speednet_architecture_with_a_frozen_stem() -> None:
    net, hyp = tta.anchor_network(ANCHOR)
    assert hyp["bs"] == 1024
    assert not net[0].weight.requires_grad and net[0].bias.requires_grad
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Same convolutions as featvis's default network: the same FLOPs per training image.
    per_image = tta.training_step_flops(net, 1)
    assert per_image == tta.training_step_flops(SpeedNet(), 1)
    small, _ = tta.anchor_network(ANCHOR, (8, 16, 16))
    assert tta.training_step_flops(small, 1) == tta.training_step_flops(SpeedNet(widths=(8, 16, 16)), 1)


@needs_anchor
@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "label", "dtype"),
    [("bf16", "bf16 autocast", "torch.bfloat16"), ("float32", "float32 (autocast off)", "torch.float32")],
)
def test_anchor_smoke_run_is_parsed(tmp_path: Path, precision: str, label: str, dtype: str) -> None:
    """One training step of the anchor's batch (1024 images) with tiny widths: 30-40 s in bf16 on AVX2."""
    write_cifar_folder(tmp_path / "data", per_batch=205)  # 1025 training images: one anchor step
    result = tta.main(
        [
            "--data", str(tmp_path / "data"), "--anchor", str(ANCHOR), "--anchor-epochs", "1", "--epochs", "1",
            "--max-train-batches", "1", "--widths", "8", "16", "16", "--peak-size", "16", "64", "16",
            "--peak-seconds", "0.2", "--fit-args", f"--data.batch_size 100 {SMOKE_FIT}", "--anchor-precision", precision,
        ]
    )  # fmt: skip
    anchor = result["anchor"]
    assert len(anchor["accuracy"]) == 1 and 0.0 <= anchor["final_tta_accuracy"] <= 1.0
    assert anchor["steps_per_second"] == pytest.approx(1 / anchor["train_seconds"])
    assert anchor["wall_seconds"] > anchor["script_wall_seconds"] > anchor["train_seconds"] > 0
    assert 0.0 < anchor["fraction_of_peak"] < 1.5 and dtype in result["peak"]
    assert result["ratios"]["wall"] == pytest.approx(
        result["featvis"]["wall_seconds"] / anchor["wall_seconds"]
    )
    assert any(line.startswith(f"| anchor airbench94_cpu.py | {label} | 1 |") for line in result["table"])


def test_float32_shim_runs_a_script_with_its_autocast_disabled_and_its_arguments(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import sys, torch\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    print((torch.ones(2, 2) @ torch.ones(2, 2)).dtype, sys.argv[1:], __name__)\n"
    )
    plain = subprocess.run(
        [sys.executable, str(script), "--x", "1"], capture_output=True, text=True, check=True
    )
    shimmed = subprocess.run(
        [sys.executable, "-c", tta.FLOAT32_SHIM, str(script), "--x", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert plain.stdout.split()[0] == "torch.bfloat16"
    assert shimmed.stdout.strip() == "torch.float32 ['--x', '1'] __main__"


def test_gpu_check_refuses_a_machine_without_cuda_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        run_script(lambda: gpu_check.main(["--data", str(tmp_path), "--epochs", "1"]))
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: benchmarks.gpu_check needs a CUDA GPU")
    assert not list(tmp_path.iterdir())  # stopped before any work


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_anchor_launcher_reuses_freed_memory_only_when_asked(tmp_path: Path) -> None:
    # The allocator test's script as the "anchor": told "system", it leaves malloc alone itself, so only the
    # launcher can make its freed 64 MiB blocks come back without faulting their pages in again.
    script = tmp_path / "faults.py"
    script.write_text(FAULTS_SCRIPT)
    faults = {}
    for keep in (False, True):
        command = [*tta.anchor_launcher(float32=False, keep_memory=keep), str(script), "system"]
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
        faults[keep] = float(out.stdout.strip().splitlines()[-1])
    assert faults[False] > 8_000
    assert faults[True] < 0.05 * faults[False]
