"""The hidden-units benchmark on the tiny checkpoint: its numbers agree with a brute-force reading of the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import benchmarks.hidden_units as hidden_units
from benchmarks.reference_models import cifar_folder
from featvis.cifar import read_split
from featvis.model import load_classifier
from featvis.probe import ProbeSet

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
