"""Objectives: values, arithmetic, range errors and layer-name suggestions."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from featvis.engine import (
    Activations,
    Channel,
    ClassLogit,
    Diversity,
    LayerCapture,
    LayerL2,
    Neuron,
    as_objective,
    layer_names,
    render,
    resolve_layer,
)
from featvis.engine.objectives import gram_cosines, gram_matrices


def _acts(seed: int = 0) -> Activations:
    generator = torch.Generator().manual_seed(seed)
    return Activations(
        torch.randn(4, 10, generator=generator),
        {
            "block.conv": torch.randn(4, 6, 5, 7, generator=generator),
            "fc": torch.randn(4, 12, generator=generator),
        },
    )


def _net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                OrderedDict(conv1=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), conv2=nn.Conv2d(4, 6, 3))
            ),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            head=nn.Linear(6, 5),
        )
    )


def test_basic_objectives_read_the_right_values() -> None:
    acts = _acts()
    conv = acts["block.conv"]
    assert torch.equal(ClassLogit(3)(acts), acts.logits[:, 3])
    assert torch.allclose(Channel("block.conv", 2)(acts), conv[:, 2].mean(dim=(1, 2)))
    assert torch.equal(Channel("fc", 11)(acts), acts["fc"][:, 11])
    assert torch.equal(Neuron("block.conv", 1)(acts), conv[:, 1, 2, 3])  # centre of a 5x7 map
    assert torch.equal(Neuron("block.conv", 1, y=0, x=6)(acts), conv[:, 1, 0, 6])
    assert torch.allclose(LayerL2("block.conv")(acts), conv.pow(2).mean(dim=(1, 2, 3)))


def test_objective_arithmetic() -> None:
    acts = _acts()
    a, b, c = ClassLogit(1), ClassLogit(2), Channel("block.conv", 0)
    va, vb, vc = a(acts), b(acts), c(acts)
    assert torch.allclose((a + b)(acts), va + vb)
    assert torch.allclose((a - b)(acts), va - vb)
    assert torch.allclose((2 * a - 0.5 * c)(acts), 2 * va - 0.5 * vc)
    assert torch.allclose((a * 3)(acts), 3 * va)
    assert torch.allclose((-a)(acts), -va)
    assert torch.allclose((a / 4)(acts), va / 4)
    assert torch.allclose((a + b - (a - c) * 2)(acts), vb - va + 2 * vc)
    combined = a + 2 * c
    assert combined.layers == frozenset({"block.conv"})
    assert combined.description == "class 1 + 2 * channel block.conv:0"
    assert (a - b).description == "class 1 - class 2"
    with pytest.raises(ValueError, match="finite"):
        _ = a * float("inf")
    with pytest.raises(ValueError, match="zero"):
        _ = a / 0
    with pytest.raises(TypeError):
        _ = a + 1.0


def test_diversity_penalises_similar_styles() -> None:
    same = torch.randn(1, 6, 5, 5).repeat(4, 1, 1, 1)
    varied = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(1))
    diversity = Diversity("layer", weight=0.5)
    value_same = diversity(Activations(torch.zeros(4, 2), {"layer": same}))
    value_varied = diversity(Activations(torch.zeros(4, 2), {"layer": varied}))
    assert torch.allclose(value_same, torch.full((4,), -0.5), atol=1e-5)  # cosine similarity 1
    assert (value_varied > value_same).all()
    single = diversity(Activations(torch.zeros(1, 2), {"layer": varied[:1]}))
    assert torch.equal(single, torch.zeros(1))
    grams = gram_matrices(varied)
    assert grams.shape == (4, 6, 6)
    assert torch.allclose(grams[0], varied[0].reshape(6, -1) @ varied[0].reshape(6, -1).T / 25)


def test_feature_diversity_tells_apart_what_the_gram_matrices_do_not() -> None:
    # Four images with the same channel statistics (a pattern shifted in space): one Gram matrix, four layouts.
    pattern = torch.randn(6, 5, 5, generator=torch.Generator().manual_seed(2))
    shifted = torch.stack([pattern.roll(shifts=(i, 2 * i), dims=(1, 2)) for i in range(4)])
    acts = Activations(torch.zeros(4, 2), {"layer": shifted})
    gram, features = Diversity("layer", 1.0), Diversity("layer", 1.0, kind="features")
    assert torch.allclose(gram(acts), torch.full((4,), -1.0), atol=1e-5)  # no style difference at all
    unit = torch.nn.functional.normalize(shifted.reshape(4, -1), dim=1)
    cosine = unit @ unit.T
    assert torch.allclose(features(acts), -(cosine.sum(dim=1) - 1) / 3, atol=1e-5)
    assert (features(acts) > -0.5).all()  # the layouts differ
    same = Activations(torch.zeros(4, 2), {"layer": pattern.expand(4, -1, -1, -1)})
    assert torch.allclose(features(same), torch.full((4,), -1.0), atol=1e-5)
    assert features.description == "1 * diversity layer (features)"
    with pytest.raises(ValueError, match="diversity kind must be one of 'gram', 'features', got 'style'"):
        Diversity("layer", 1.0, kind="style")  # type: ignore[arg-type]


def test_out_of_range_indices_name_the_value_and_the_range() -> None:
    acts = _acts()
    with pytest.raises(ValueError, match=r"class index 12 is out of range.*10 classes \(valid: 0\.\.9\)"):
        ClassLogit(12)(acts)
    with pytest.raises(
        ValueError, match=r"channel 6 is out of range for layer 'block.conv'.*\(valid: 0\.\.5\)"
    ):
        Channel("block.conv", 6)(acts)
    with pytest.raises(ValueError, match=r"neuron position \(y=9, x=0\).*valid: y in 0\.\.4"):
        Neuron("block.conv", 0, y=9, x=0)(acts)
    with pytest.raises(ValueError, match="class index must be an integer >= 0, got -1"):
        ClassLogit(-1)
    with pytest.raises(ValueError, match="channel must be an integer >= 0"):
        Channel("block.conv", -3)
    with pytest.raises(ValueError, match="diversity weight must be a finite number >= 0"):
        Diversity("layer", -1.0)


def test_unknown_layer_lists_the_closest_names() -> None:
    net = _net()
    assert "features.conv1" in layer_names(net)
    assert resolve_layer(net, "head") is net.head
    with pytest.raises(
        ValueError, match=r"unknown layer 'features.conv'.*closest valid names.*'features.conv1'"
    ):
        resolve_layer(net, "features.conv")
    with pytest.raises(ValueError, match=r"unknown layer 'fetures.conv3'.*'features.conv2'"):
        render(net, Channel("fetures.conv3", 0), steps=1, images_per_target=1)


def test_render_reports_bad_channel_and_class_with_the_valid_range() -> None:
    net = _net()
    with pytest.raises(ValueError, match=r"channel 9 is out of range for layer 'features.conv2'.*0\.\.5"):
        render(net, Channel("features.conv2", 9), steps=1, images_per_target=1)
    with pytest.raises(
        ValueError, match=r"class index 5 is out of range: the model has 5 classes \(valid: 0\.\.4\)"
    ):
        render(net, [0, 5], steps=1, images_per_target=1)


def test_layer_capture_removes_its_hooks() -> None:
    net = _net()
    with LayerCapture(net, ["features.conv2", "head"]) as capture:
        logits = net(torch.zeros(2, 3, 8, 8))
        outputs = capture.take()
        assert torch.equal(outputs["head"], logits)
        assert outputs["features.conv2"].shape == (2, 6, 6, 6)
    assert all(not module._forward_hooks for module in net.modules())


def test_as_objective_accepts_class_indices_only() -> None:
    objective = as_objective(3, ["a", "b", "c", "cat"])
    assert isinstance(objective, ClassLogit) and objective.index == 3
    assert objective.description == "class 3 (cat)"
    with pytest.raises(TypeError, match="Objective or a class index"):
        as_objective("cat")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        as_objective(True)  # type: ignore[arg-type]


@pytest.mark.parametrize(("channels", "side"), [(48, 3), (6, 5)])  # positions x images below / above channels
def test_gram_cosines_equal_the_normalised_gram_matrices_either_way(channels: int, side: int) -> None:
    acts = torch.randn(4, channels, side, side, generator=torch.Generator().manual_seed(3)).relu()
    acts[2] = 0.0  # a silent image: similarity 0 to every image, itself included
    grams = gram_matrices(acts).reshape(4, -1)
    unit = torch.nn.functional.normalize(grams, dim=1)
    expected = unit @ unit.T
    got = gram_cosines(acts)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got[2], torch.zeros(4)) and got[0, 0] == pytest.approx(1.0, abs=1e-6)
    # The gradients agree too: the render differentiates through the similarities.
    leaf = acts.clone().requires_grad_(True)
    (grad_got,) = torch.autograd.grad(gram_cosines(leaf).sum(), leaf)
    leaf_unit = torch.nn.functional.normalize(gram_matrices(leaf).reshape(4, -1), dim=1)
    (grad_expected,) = torch.autograd.grad((leaf_unit @ leaf_unit.T).sum(), leaf)
    assert torch.allclose(grad_got, grad_expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gram", "features"])
@pytest.mark.parametrize(("channels", "side"), [(48, 3), (6, 5)])  # both ways of gram_cosines
def test_diversity_of_groups_in_one_pass_equals_one_group_at_a_time(
    kind: str, channels: int, side: int
) -> None:
    acts = torch.randn(12, channels, side, side, generator=torch.Generator().manual_seed(5)).relu()
    diversity = Diversity("layer", 1.5, kind=kind)  # type: ignore[arg-type]
    leaf = acts.clone().requires_grad_(True)
    grouped = diversity.grouped(Activations(torch.zeros(12, 2), {"layer": leaf}), 3)
    one_at_a_time = torch.stack(
        [diversity(Activations(torch.zeros(4, 2), {"layer": leaf[4 * g : 4 * g + 4]})) for g in range(3)]
    )
    assert grouped.shape == (3, 4)
    assert torch.allclose(grouped, one_at_a_time, atol=1e-6)
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(6))
    (got,) = torch.autograd.grad((grouped * weights).sum(), leaf)
    (expected,) = torch.autograd.grad((one_at_a_time * weights).sum(), leaf)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="12 images do not split into 5 equal groups"):
        diversity.grouped(Activations(torch.zeros(12, 2), {"layer": acts}), 5)


def test_diversity_gradient_keeps_a_channels_last_map_channels_last() -> None:
    # A contiguous gradient meeting the channels-last one of the layers above makes the CPU's elementwise
    # backward kernels (GELU, the gradient sum) several times slower; the term's gradient keeps the map's layout.
    acts = torch.randn(8, 16, 7, 7, generator=torch.Generator().manual_seed(7))
    leaf = acts.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    (grad,) = torch.autograd.grad(
        Diversity("layer").grouped(Activations(torch.zeros(8, 2), {"layer": leaf}), 2).sum(), leaf
    )
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
