"""The hidden-units benchmark on the tiny checkpoint: its numbers agree with a brute-force reading of the model
and with renders made directly with the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import benchmarks.hidden_units as hidden_units
from benchmarks.reference_models import cifar_folder
from featvis.cifar import read_split
from featvis.engine import Channel, RenderConfig, render
from featvis.model import load_classifier
from featvis.probe import ProbeSet
from featvis.quality.metrics import random_affine

CKPT = Path(__file__).resolve().parents[1] / "data" / "tiny_classifier.ckpt"
K, N, PROBE = 3, 4, 40


def _brute_force(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Each probe image's per-channel mean of ``net.relu3`` (a hook of the test's own) and the probe labels."""
    model = load_classifier(str(CKPT))
    images, labels = read_split(cifar_folder(data_dir), train=True)
    chosen = ProbeSet.choose(len(images), PROBE, 0)
    outputs: list[torch.Tensor] = []
    model.net.relu3.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    with torch.no_grad():
        model(model.colour.to_model(images[chosen].float() / 255))
    return outputs[0].mean(dim=(2, 3)), labels[chosen]


def test_quality_numbers_match_the_models_own_activations(cifar_dir, tmp_path) -> None:
    out = tmp_path / "hidden.json"
    args = ["--ckpt", str(CKPT), "--data-dir", str(cifar_dir), "--k", str(K), "--examples", str(N)]
    args += ["--probe-size", str(PROBE), "--steps", "4", "--random-draws", "5", "--json", str(out)]
    result = hidden_units.main(args)

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["layer"] == "net.relu3" and result["channels_in_layer"] == 8
    means, labels = _brute_force(cifar_dir)
    variance = means.var(dim=0, unbiased=False)
    kurtosis = ((means - means.mean(dim=0)) / means.std(dim=0, unbiased=False)).pow(4).mean(dim=0)
    assert result["variance"]["channels"] == sorted(range(8), key=lambda c: -float(variance[c]))[:K]
    assert result["kurtosis"]["channels"] == sorted(range(8), key=lambda c: -float(kurtosis[c]))[:K]
    median = means.median(dim=0).values
    selectivity = (means.sort(dim=0, descending=True).values[N - 1] - median) / (means - median).abs().median(
        dim=0
    ).values
    assert result["selectivity"]["channels"] == sorted(range(8), key=lambda c: -float(selectivity[c]))[:K]
    assert (
        result["random"]["channels"]
        == torch.randperm(8, generator=torch.Generator().manual_seed(0))[:K].sort().values.tolist()
    )
    for rule in ("selectivity", "kurtosis", "variance", "random"):
        row, per = result[rule], result[rule]["per_channel"]
        channels = row["channels"]
        assert per["top1_value"] == pytest.approx(means[:, channels].max(dim=0).values.tolist(), abs=1e-5)
        wins = [v > t for v, t in zip(per["vis_value"], per["top1_value"], strict=True)]
        assert row["maximisation"] == pytest.approx(sum(wins) / K)
        for channel, purity in zip(channels, per["purity"], strict=True):
            top = sorted(range(PROBE), key=lambda i: (-float(means[i, channel]), i))[:N]
            classes = labels[top].tolist()
            assert purity == pytest.approx(max(map(classes.count, classes)) / N)
        assert row["purity"] == pytest.approx(sum(per["purity"]) / K)
        assert all(
            share * N == pytest.approx(round(share * N)) and 0 <= share <= 1 for share in per["agreement"]
        )
        assert 0 <= row["agreement_baseline"] <= 1 and row["seconds"] > 0
    assert 1 / N <= result["purity_random_draws"] <= 1 and 1 / N <= result["purity_all_channels"] <= 1


def test_cost_mode_times_one_sheet_and_quality_mode_needs_data(tmp_path) -> None:
    result = hidden_units.main(
        [
            "--mode",
            "cost",
            "--ckpt",
            str(CKPT),
            "--k",
            "2",
            "--examples",
            "2",
            "--probe-size",
            "8",
            "--steps",
            "2",
            "--epoch-seconds",
            "100",
        ]
    )
    assert result["layer"] == "net.relu3" and result["channels"] == 2 and result["steps"] == 2
    parts = result["probe_read"] + result["setup"] + result["sheet_call"]
    assert result["total"] == pytest.approx(parts) and 0 < result["render"] < result["sheet_call"]
    assert result["epoch_share"] == pytest.approx(result["total"] / 100)
    with pytest.raises(ValueError, match="quality mode needs --data-dir"):
        hidden_units.main(["--ckpt", str(CKPT)])


def _epoch_before(tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint with ``net.conv3`` a little different: the stand-in for the epoch before."""
    checkpoint = torch.load(CKPT, map_location="cpu", weights_only=False)
    weight = checkpoint["state_dict"]["net.conv3.weight"]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    checkpoint["state_dict"]["net.conv3.weight"] = weight + 0.3 * weight.std() * noise
    path = tmp_path / "before.ckpt"
    torch.save(checkpoint, path)
    return path


def test_warm_mode_rows_match_renders_made_directly_with_the_engine(cifar_dir, tmp_path) -> None:
    before, out, steps = _epoch_before(tmp_path), tmp_path / "warm.json", 8
    args = ["--mode", "warm", "--ckpt-before", str(before), "--ckpt", str(CKPT), "--data-dir", str(cifar_dir)]
    args += ["--k", str(K), "--examples", str(N), "--probe-size", str(PROBE), "--steps", str(steps)]
    result = hidden_units.main([*args, "--json", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    means, _ = _brute_force(cifar_dir)  # the default rule (selectivity), on the later checkpoint
    median = means.median(dim=0).values
    selectivity = (means.sort(dim=0, descending=True).values[N - 1] - median) / (means - median).abs().median(
        dim=0
    ).values
    channels = sorted(range(8), key=lambda c: -float(selectivity[c]))[:K]
    assert result["layer"] == "net.relu3" and result["channels"] == channels and result["steps"] == steps
    rows = result["rows"]
    assert [(r["start"], r["fraction"], r["steps"]) for r in rows] == [
        ("start", 0.0, 0),
        ("cold", 1.0, 8),
        ("warm", 1 / 8, 1),
        ("warm", 1 / 4, 2),
        ("warm", 1 / 2, 4),
        ("warm", 1.0, 8),
    ]
    assert rows[1]["objective_rel"] == 1.0 and rows[1]["robustness_rel"] == 1.0
    assert all(r["seconds"] > 0 for r in rows[1:])

    # The same renders made directly with the engine: cold on each checkpoint, then warm from the earlier one's.
    earlier, later = load_classifier(str(before)), load_classifier(str(CKPT))
    config = RenderConfig(image_size=32, steps=steps, images_per_target=1)
    objectives = [Channel("net.relu3", c) for c in channels]
    start = render(earlier, objectives, config=config, colour=earlier.colour)
    cold = render(later, objectives, config=config, colour=later.colour)
    assert rows[1]["objective"] == pytest.approx(float(cold.values.mean()), rel=1e-5)
    for row in rows[2:]:
        warm = render(later, objectives, config=config.replace(steps=row["steps"]), start=start.parameters)
        assert row["objective"] == pytest.approx(float(warm.values.mean()), rel=1e-5)
        assert row["objective_rel"] == pytest.approx(row["objective"] / rows[1]["objective"])
        assert row["robustness_rel"] == pytest.approx(row["robustness"] / rows[1]["robustness"])

    # Robustness: the objective under 8 random affine draws from a generator seeded with --seed, read by a hook.
    outputs: list[torch.Tensor] = []
    later.net.relu3.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(8):
            later(later.colour.to_model(random_affine(cold.rgb[:, 0], generator)))
    moved = torch.stack([o.mean(dim=(2, 3))[torch.arange(K), channels] for o in outputs])
    assert rows[1]["robustness"] == pytest.approx(float(moved.mean()), rel=1e-5)
    # The start row: the earlier checkpoint's images as they are, on the later one.
    outputs.clear()
    with torch.no_grad():
        later(later.colour.to_model(start.rgb[:, 0]))
    assert rows[0]["objective"] == pytest.approx(
        float(outputs[0].mean(dim=(2, 3))[torch.arange(K), channels].mean()), rel=1e-5
    )
    enough = [r["fraction"] for r in rows[2:] if r["objective_rel"] >= 0.98 and r["robustness_rel"] >= 0.98]
    assert result["smallest_fraction"] == (min(enough) if enough else None)
    with pytest.raises(ValueError, match="warm mode needs --ckpt-before and --ckpt"):
        hidden_units.main(["--mode", "warm", "--ckpt", str(CKPT)])
