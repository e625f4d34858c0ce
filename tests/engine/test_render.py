"""render(): outputs, determinism, chunking, errors, and no side effects on the model or global state."""

from __future__ import annotations

import ast
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import correlated_colour
from torch import Tensor, nn

import featvis.engine
from featvis.colour import ColourTransform, InputConvention, to_grey
from featvis.engine import (
    Activations,
    Channel,
    ClassLogit,
    Diversity,
    Jitter,
    LayerCapture,
    NonFiniteError,
    Objective,
    Pad,
    RenderConfig,
    Rotate,
    Scale,
    render,
)
from featvis.engine.spectrum import SPECTRA_LIMIT, fourier_frequencies
from featvis.engine.squash import ColourSquash
from featvis.quality.metrics import colour_distance

# Tiny-model settings (the tuned defaults target the real CIFAR model): few steps, a larger learning rate.
FAST = {
    "steps": 12,
    "images_per_target": 2,
    "image_size": 16,
    "autocast": "none",
    "lr": 0.05,
    "colour_weight": 0.0,  # weighed against a CIFAR model's logits; tests of the prior set their own
    "augment": [Pad(1), Jitter(1.0), Scale(0.9, 1.1), Rotate(5.0)],
}


class TinyNet(nn.Module):
    """Conv, BatchNorm, dropout and a linear head: the parts whose state a render could disturb."""

    def __init__(self, num_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 8, 3, padding=1),
                bn1=nn.BatchNorm2d(8),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(8, 12, 3, padding=1, stride=2),
                relu2=nn.ReLU(),
                drop=nn.Dropout(0.3),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, num_classes)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            self.features.bn1.running_mean.copy_(torch.randn(8, generator=generator) * 0.1)
            self.features.bn1.running_var.uniform_(0.5, 1.5, generator=generator)
        self.class_names = [f"c{i}" for i in range(num_classes)]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def _colour() -> ColourTransform:
    return correlated_colour(32, 0.6)


def test_result_shapes_ranges_and_model_input() -> None:
    colour = _colour()
    result = render(TinyNet(), colour=colour, **FAST)
    assert result.rgb.shape == (4, 2, 3, 16, 16) and result.model_input.shape == (4, 2, 3, 16, 16)
    assert result.values.shape == (4, 2)
    assert result.rgb.min().item() >= 0.0 and result.rgb.max().item() <= 1.0
    assert result.rgb.std().item() > 0.01
    flat = result.rgb.reshape(-1, 3, 16, 16)
    assert torch.allclose(result.model_input.reshape(-1, 3, 16, 16), colour.to_model(flat), atol=1e-5)
    assert result.descriptions == ["class 0 (c0)", "class 1 (c1)", "class 2 (c2)", "class 3 (c3)"]
    assert result.logits.shape == (4, 2, 4)


def test_values_are_the_objective_on_the_returned_images() -> None:
    net = TinyNet().eval()
    result = render(net, [2, Channel("features.conv2", 5)], colour=_colour(), **FAST)
    with torch.no_grad():
        logits = net(result.model_input[0])
        conv2 = net.features.conv2(net.features[:3](result.model_input[1]))
    assert torch.allclose(result.values[0], logits[:, 2], atol=1e-5)
    assert torch.allclose(result.values[1], conv2[:, 5].mean(dim=(1, 2)), atol=1e-5)


def test_optimisation_increases_the_target() -> None:
    net, colour = TinyNet(), _colour()
    targets = [ClassLogit(0), ClassLogit(3), Channel("features.conv2", 1)]
    start = render(net, targets, colour=colour, **{**FAST, "steps": 0})
    end = render(net, targets, colour=colour, **{**FAST, "steps": 40})
    assert (end.values > start.values + 0.5).all(), (start.values, end.values)


def test_pixel_parameterisation_and_no_transforms_also_optimise() -> None:
    settings = {**FAST, "parameterisation": "pixel", "augment": False, "decorrelate": False}
    start = render(TinyNet(), 1, **{**settings, "steps": 0})
    end = render(TinyNet(), 1, **settings)
    assert end.rgb.min().item() >= 0 and end.rgb.max().item() <= 1
    assert (end.values > start.values).all()


def test_same_seed_same_images_other_seed_other_images() -> None:
    net = TinyNet()
    first = render(net, seed=3, **FAST)
    again = render(net, seed=3, **FAST)
    other = render(net, seed=4, **FAST)
    assert torch.equal(first.rgb, again.rgb) and torch.equal(first.values, again.values)
    assert not torch.allclose(first.rgb, other.rgb)
    assert not torch.allclose(first.rgb[0, 0], first.rgb[0, 1])  # images of one target differ


def test_chunked_render_equals_unchunked() -> None:
    net = TinyNet()
    settings = {**FAST, "diversity_layer": "features.conv2", "diversity_weight": 0.5, "steps": 8}
    whole = render(net, **settings)
    chunked = render(net, max_batch_size=3, **settings)  # one target (2 images) per forward pass
    assert torch.allclose(whole.rgb, chunked.rgb, atol=1e-5)
    assert torch.allclose(whole.values, chunked.values, atol=1e-4)
    with pytest.raises(ValueError, match=r"max_batch_size \(1\) must be >= images_per_target \(2\)"):
        render(net, max_batch_size=1, **settings)


def test_diversity_lowers_the_style_similarity_within_a_target() -> None:
    net = TinyNet()
    settings = {**FAST, "steps": 20, "augment": False, "images_per_target": 4}
    plain = render(net, 0, **settings)
    diverse = render(net, 0, diversity_layer="features.relu1", diversity_weight=5.0, **settings)

    def similarity(result) -> float:
        with torch.no_grad(), LayerCapture(net, ["features.relu1"]) as capture:
            net.eval()(result.model_input[0])
            acts = Activations(torch.zeros(4, 1), capture.take())
        return -Diversity("features.relu1")(acts).mean().item()  # mean Gram cosine similarity

    assert similarity(diverse) < similarity(plain) - 0.01
    assert not torch.equal(diverse.values, plain.values)


def test_feature_diversity_lowers_the_activation_similarity_within_a_target() -> None:
    net = TinyNet()
    settings = {**FAST, "steps": 20, "augment": False, "images_per_target": 4}
    plain = render(net, 0, **settings)
    layer = {"diversity_layer": "features.relu1", "diversity_weight": 5.0}
    diverse = render(net, 0, diversity_kind="features", **layer, **settings)
    gram = render(net, 0, **layer, **settings)

    def similarity(result) -> float:
        with torch.no_grad(), LayerCapture(net, ["features.relu1"]) as capture:
            net.eval()(result.model_input[0])
            acts = Activations(torch.zeros(4, 1), capture.take())
        return -Diversity("features.relu1", kind="features")(acts).mean().item()  # mean activation cosine

    assert similarity(diverse) < similarity(plain) - 0.01
    assert not torch.equal(diverse.rgb, gram.rgb)  # another objective than the Gram matrices'


class _NanForTarget(Objective):
    """Class 1's logit, but NaN once it exceeds where it started (so the first steps are fine)."""

    @property
    def description(self) -> str:
        return "broken target"

    def __call__(self, activations: Activations) -> Tensor:
        logit = activations.logits[:, 1]
        return torch.where(logit.detach() > -1e9, logit * float("nan"), logit)


def test_nan_raises_an_error_naming_the_target_and_leaves_the_model_as_it_was() -> None:
    net = _model_with_mixed_state()
    before = _snapshot(net)
    with pytest.raises(
        NonFiniteError, match=r"NaN or infinite at step 0 for target\(s\) \['broken target'\]"
    ):
        render(net, [ClassLogit(0), _NanForTarget(), Channel("features.conv2", 0)], **FAST)
    _assert_unchanged(before, _snapshot(net))  # modes restored and hooks removed on the error path too


def _snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
    }


def _assert_unchanged(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for old, new in zip(before["grads"], after["grads"], strict=True):
        assert (old is None and new is None) or torch.equal(old, new)
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    assert before["hooks"] == after["hooks"]


def _model_with_mixed_state() -> TinyNet:
    net = TinyNet()
    net.train()
    net.features.drop.eval()  # a submodule in its own mode: must come back exactly so
    net.features.conv1.weight.requires_grad_(False)
    net.head.weight.grad = torch.full_like(net.head.weight, 7.0)
    return net


def test_no_side_effects_on_the_model() -> None:
    net = _model_with_mixed_state()
    before = _snapshot(net)
    render(net, [0, Channel("features.conv2", 2)], diversity_layer="features.bn1", **FAST)
    _assert_unchanged(before, _snapshot(net))
    assert net.features.bn1.num_batches_tracked.item() == 0  # BatchNorm never saw a training-mode batch


def test_global_random_states_are_untouched() -> None:
    net = TinyNet()  # building layers draws from the global RNG; rendering must not
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    render(net, diversity_layer="features.conv2", **FAST)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(context) -> None:
    net = _model_with_mixed_state()
    expected = render(net, colour=_colour(), **FAST)
    before = _snapshot(net)
    with context():
        # A colour transform built under inference mode, as a datamodule set up in a validation loop might.
        colour = _colour()
        result = render(net, colour=colour, **FAST)
    _assert_unchanged(before, _snapshot(net))
    assert torch.equal(result.rgb, expected.rgb)
    start = render(net, colour=_colour(), **{**FAST, "steps": 0})
    assert (result.values - start.values).mean().item() > 0.5  # it optimised, gradients and all


def test_dtype_follows_the_model_and_bf16_autocast_still_optimises() -> None:
    net64 = TinyNet().double()
    result = render(net64, **FAST)
    assert result.model_input.dtype == torch.float64 and result.rgb.dtype == torch.float64
    start = render(TinyNet(), **{**FAST, "steps": 0})
    bf16 = render(TinyNet(), **{**FAST, "autocast": "bf16", "steps": 20})
    assert (bf16.values > start.values).all()


def test_model_colour_and_class_names_are_used_when_present() -> None:
    net = TinyNet()
    net.colour = _colour()
    implicit = render(net, **FAST)
    explicit = render(net, colour=net.colour, **FAST)
    assert torch.equal(implicit.rgb, explicit.rgb)
    identity = render(TinyNet(), **FAST)
    assert not torch.allclose(identity.model_input, implicit.model_input)


def test_config_and_keyword_overrides_render_the_same_images() -> None:
    config = RenderConfig(steps=3, images_per_target=1, image_size=8, autocast="none", seed=5)
    from_config = render(TinyNet(), config=config)
    overridden = render(
        TinyNet(), config=RenderConfig(seed=5), steps=3, images_per_target=1, image_size=8, autocast="none"
    )
    assert from_config.rgb.shape == (4, 1, 3, 8, 8)
    assert torch.equal(from_config.rgb, overridden.rgb)
    with pytest.raises(ValueError, match=r"unknown render setting\(s\) \['stpes'\]"):
        render(TinyNet(), stpes=3)


def test_final_logits_give_the_target_probabilities() -> None:
    net = TinyNet()
    result = render(net, [1, Channel("features.conv2", 0)], **FAST)
    with torch.no_grad():
        logits = net.eval()(result.model_input[0]).float()
    assert torch.allclose(result.logits[0], logits, atol=1e-5)
    probs = result.target_probs()
    assert torch.allclose(probs[0], logits.softmax(dim=1)[:, 1], atol=1e-6)
    assert torch.isnan(probs[1]).all()  # a channel target has no class


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": -1}, "steps must be an integer >= 0, got -1"),
        ({"images_per_target": 0}, "images_per_target must be an integer >= 1"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"optimizer": "lbfgs"}, "optimizer must be 'adam'"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of 'cosine', 'constant', got 'step'"),
        ({"autocast": "int8"}, "autocast must be one of 'auto', 'bf16', 'fp16', 'none', got 'int8'"),
        (
            {"parameterisation": "wavelet"},
            "parameterisation must be one of 'fourier', 'pixel', 'phase', got 'wavelet'",
        ),
        ({"max_batch_size": 1}, r"max_batch_size \(1\) must be >= images_per_target \(2\)"),
        ({"augment": "yes"}, "augment must be True, False or a list of Transforms"),
        ({"diversity_kind": "style"}, "diversity_kind must be one of 'gram', 'features', got 'style'"),
        ({"fourier_scale": "1/f^2"}, "fourier_scale must be one of '1/f', 'data', got '1/f\\^2'"),
        ({"init_layout": 1.5}, "init_layout must be"),
    ],
)
def test_bad_settings_raise_value_errors(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(TinyNet(), **{**FAST, **settings})


class _RecordingAdam(torch.optim.Adam):
    def __init__(self, params: list[Tensor], lr: float) -> None:
        super().__init__(params, lr=lr)
        self.seen: list[float] = []

    def step(self, closure: object = None) -> object:
        self.seen.append(self.param_groups[0]["lr"])
        return super().step(closure)


def test_optimizer_factory_and_learning_rate_schedules() -> None:
    made: list[_RecordingAdam] = []

    def factory(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
        made.append(_RecordingAdam(params, lr))
        return made[-1]

    render(TinyNet(), 0, optimizer=factory, **{**FAST, "steps": 5, "lr": 0.1})
    expected = [0.1 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / 5))) for step in range(5)]
    assert made[0].seen == pytest.approx(expected)
    assert made[0].seen[0] == pytest.approx(0.1) and made[0].seen[-1] < 0.025
    render(TinyNet(), 0, optimizer=factory, lr_schedule="constant", **{**FAST, "steps": 3, "lr": 0.1})
    assert made[1].seen == pytest.approx([0.1, 0.1, 0.1])


def test_rectangular_images() -> None:
    result = render(TinyNet(), 0, **{**FAST, "image_size": (12, 20)})
    assert result.rgb.shape == (1, 2, 3, 12, 20)
    with pytest.raises(
        ValueError, match=r"image_size must be a positive integer or \(height, width\), got 0"
    ):
        render(TinyNet(), 0, **{**FAST, "image_size": 0})


def test_empty_targets_raise() -> None:
    with pytest.raises(ValueError, match="targets is empty"):
        render(TinyNet(), [], **FAST)


def test_engine_sources_never_import_lightning_or_global_random_sources() -> None:
    for path in Path(featvis.engine.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not any(
            name.split(".")[0] in {"lightning", "pytorch_lightning", "random"} for name in imported
        ), path
        assert "np.random" not in path.read_text() and "torch.manual_seed" not in path.read_text(), path


def test_a_basis_changes_the_optimisation_space_but_not_the_model_input_space() -> None:
    normalisation = ColourTransform.from_normalisation([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    plain = render(TinyNet(), colour=normalisation, **FAST)
    assert torch.equal(render(TinyNet(), colour=normalisation, basis=normalisation, **FAST).rgb, plain.rgb)
    whitened = render(TinyNet(), colour=normalisation, basis=_colour(), **FAST)
    assert not torch.allclose(whitened.rgb, plain.rgb, atol=1e-3)
    flat = whitened.rgb.reshape(-1, 3, 16, 16)
    assert torch.allclose(
        whitened.model_input.reshape(-1, 3, 16, 16), normalisation.to_model(flat), atol=1e-5
    )


# ---------------------------------------------------------------------------------------- input conventions


class GreyNet(nn.Module):
    """A TinyClassifier-like 1-channel model: its first conv takes one (grey) channel."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


GREY = InputConvention(mean=[0.45], std=[0.25], order="L")


def test_a_grayscale_model_renders_grey_images_from_one_channel() -> None:
    net = GreyNet()
    result = render(net, colour=GREY.space(), **FAST)
    assert result.rgb.shape == (3, 2, 3, 16, 16) and result.model_input.shape == (3, 2, 1, 16, 16)
    assert torch.equal(result.rgb[:, :, 0], result.rgb[:, :, 1]) and torch.equal(
        result.rgb[:, :, 0], result.rgb[:, :, 2]
    )
    assert result.rgb.std().item() > 0.01
    flat = result.rgb.reshape(-1, 3, 16, 16)
    expected = GREY.space().to_model(to_grey(flat))
    assert torch.allclose(result.model_input.reshape(-1, 1, 16, 16), expected, atol=1e-5)
    with torch.no_grad():
        logits = net(result.model_input.reshape(-1, 1, 16, 16))
    assert torch.allclose(result.logits.reshape(-1, 3), logits, atol=1e-5)
    start = render(net, colour=GREY, **{**FAST, "steps": 0})  # an InputConvention is taken too
    end = render(net, colour=GREY, **{**FAST, "steps": 40})
    assert (end.values > start.values + 0.1).all(), (start.values, end.values)


def test_a_channel_mismatch_fails_at_the_probe_naming_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"takes 1 channel but the input convention gives 3; pass InputConvention\(order='L'"
    ) as caught:
        render(GreyNet(), **FAST)
    assert "\n" not in str(caught.value)
    with pytest.raises(
        ValueError, match=r"takes 3 channels but the input convention gives 1; pass an RGB or BGR"
    ):
        render(TinyNet(), colour=GREY, **FAST)


def test_a_255_convention_renders_the_same_images_as_its_unit_twin() -> None:
    unit = InputConvention(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    wide = InputConvention(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], max_value=255)
    a, b = render(TinyNet(), colour=unit, **FAST), render(TinyNet(), colour=wide, **FAST)
    assert torch.allclose(a.rgb, b.rgb, atol=1e-4) and torch.allclose(a.model_input, b.model_input, atol=1e-3)
    raw = render(TinyNet(), colour=InputConvention(max_value=255), basis=_colour(), **{**FAST, "steps": 0})
    flat = raw.rgb.reshape(-1, 3, 16, 16)
    assert torch.allclose(raw.model_input.reshape(-1, 3, 16, 16), flat * 255, atol=1e-3)  # fed [0, 255]


def test_a_bgr_model_sees_the_rgb_models_images_in_its_own_order() -> None:
    net = TinyNet()
    flipped = TinyNet()
    with torch.no_grad():
        flipped.features.conv1.weight.copy_(net.features.conv1.weight.flip(1))  # the same filters on B, G, R
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    rgb = render(net, colour=InputConvention(mean=mean, std=std), basis=_colour(), **FAST)
    bgr_convention = InputConvention(mean=mean[::-1], std=std[::-1], order="BGR")
    bgr = render(flipped, colour=bgr_convention, basis=_colour(), **FAST)
    assert torch.allclose(bgr.rgb, rgb.rgb, atol=1e-4)
    assert torch.allclose(bgr.model_input, rgb.model_input.flip(2), atol=1e-4)
    assert torch.allclose(bgr.values, rgb.values, atol=1e-4)


def _to_model(x: Tensor) -> Tensor:
    return (x - 0.5) / 0.25


def _to_rgb(x: Tensor) -> Tensor:
    return x * 0.25 + 0.5


def test_a_callable_convention_renders_as_its_affine_twin() -> None:
    pair = InputConvention(to_model=_to_model, to_rgb=_to_rgb)
    affine = ColourTransform.from_normalisation([0.5] * 3, [0.25] * 3)
    basis = _colour()
    a, b = (
        render(TinyNet(), colour=pair.space(), basis=basis, **FAST),
        render(TinyNet(), colour=affine, basis=basis, **FAST),
    )
    assert torch.allclose(a.rgb, b.rgb, atol=1e-5) and torch.allclose(a.model_input, b.model_input, atol=1e-4)
    # Without a basis: the neutral one, mean grey 0.5 (the images start there) and 0.25 per channel.
    start = render(TinyNet(), colour=pair, **{**FAST, "steps": 0, "augment": False})
    assert abs(start.rgb.mean().item() - 0.5) < 0.01 and start.rgb.std().item() < 0.05
    # ... which is the affine twin's own basis, so without a basis both render the same images too.
    # With the plain 1/f scale: at the steeper default, FAST's learning rate (ten times the default's) drives
    # pixels to within 0.002 of black or white, where the two spaces' float rounding differs, and twelve steps
    # amplify that to 0.007 (measured); the spaces themselves are the same.
    plain = {**FAST, "decay": 1.0}
    neutral, own = render(TinyNet(), colour=pair, **plain), render(TinyNet(), colour=affine, **plain)
    assert torch.allclose(neutral.rgb, own.rgb, atol=1e-5)


@pytest.mark.parametrize("size", [(48, 64), 64, 224])
def test_larger_and_non_square_images_render_with_the_default_transforms(size: int | tuple[int, int]) -> None:
    height, width = size if isinstance(size, tuple) else (size, size)
    settings = {**FAST, "steps": 2, "image_size": size, "augment": True, "images_per_target": 1}
    result = render(TinyNet(), [0, 1], colour=_colour(), **settings)
    assert result.rgb.shape == (2, 1, 3, height, width) and result.model_input.shape == (
        2,
        1,
        3,
        height,
        width,
    )
    assert torch.isfinite(result.model_input).all() and torch.isfinite(result.values).all()
    assert result.rgb.min().item() >= 0 and result.rgb.max().item() <= 1


def test_a_warm_start_continues_from_the_given_parameters() -> None:
    net, colour, targets = TinyNet(), _colour(), [ClassLogit(1), Channel("features.conv2", 2)]
    first = render(net, targets, colour=colour, **{**FAST, "steps": 30})
    assert first.parameters is not None
    # No steps: the warm-started images are exactly the earlier render's, a cold start's are noise.
    again = render(net, targets, colour=colour, start=first.parameters, **{**FAST, "steps": 0})
    assert torch.equal(again.rgb, first.rgb) and torch.equal(again.values, first.values)
    cold = render(net, targets, colour=colour, **{**FAST, "steps": 0})
    assert float((cold.rgb - first.rgb).abs().max()) > 0.05
    # A few more steps from there go on from the earlier value instead of starting over.
    more = render(net, targets, colour=colour, start=first.parameters, **{**FAST, "steps": 5})
    short = render(net, targets, colour=colour, **{**FAST, "steps": 5})
    assert (more.values > short.values).all(), (more.values, short.values)


def test_a_warm_start_of_another_shape_names_the_fix() -> None:
    first = render(TinyNet(), [ClassLogit(1)], colour=_colour(), **FAST)
    with pytest.raises(ValueError, match="pass the parameters of a render of the same targets"):
        render(TinyNet(), [ClassLogit(1), ClassLogit(2)], colour=_colour(), start=first.parameters, **FAST)


def test_a_phase_render_keeps_each_images_real_amplitude_spectrum_and_raises_the_target() -> None:
    net, colour = TinyNet(), _colour()
    generator = torch.Generator().manual_seed(3)
    real = torch.rand(5, 3, 16, 16, generator=generator) * 0.6 + 0.2
    real[:, :, :8] *= 0.5  # a structure, so the five spectra differ
    settings = {**FAST, "parameterisation": "phase", "steps": 30}
    start = render(net, [0, 3], colour=colour, spectra=real, **{**settings, "steps": 0})
    end = render(net, [0, 3], colour=colour, spectra=real, **settings)
    assert (end.values > start.values + 0.5).all(), (start.values, end.values)
    # Every rendered image has the amplitude spectrum of one of the real images (in the optimised colour basis;
    # up to the DC and Nyquist terms, which are real and take magnitude * cos(phase)), four different ones.
    squash = ColourSquash(colour)
    real_spectra = torch.fft.rfft2(squash.to_z(real, SPECTRA_LIMIT), norm="ortho").abs()
    rendered = torch.fft.rfft2(squash.to_z(end.rgb.flatten(0, 1)), norm="ortho").abs()  # exact inverse
    inner = (slice(None), slice(None), slice(1, 8), slice(1, 8))  # not the DC row or the Nyquist column
    matches = [
        int(
            ((real_spectra[inner] - image[inner[1:]]).abs().amax(dim=(1, 2, 3)) < 1e-3).nonzero().flatten()[0]
        )
        for image in rendered
    ]
    assert len(set(matches)) == 4, matches
    # The same seed draws the same spectra and phases: the same images.
    again = render(net, [0, 3], colour=colour, spectra=real, **settings)
    assert torch.equal(again.rgb, end.rgb)


def test_a_mean_spectrum_phase_render_gives_every_image_the_real_images_mean_amplitude() -> None:
    net, colour = TinyNet(), _colour()
    real = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.6 + 0.2
    real[:2, :, :8] *= 0.5
    settings = {**FAST, "parameterisation": "phase", "phase_spectrum": "mean", "steps": 30}
    start = render(net, [0, 3], colour=colour, spectra=real, **{**settings, "steps": 0})
    end = render(net, [0, 3], colour=colour, spectra=real, **settings)
    assert (end.values > start.values + 0.3).all(), (start.values, end.values)
    squash = ColourSquash(colour)
    mean = torch.fft.rfft2(squash.to_z(real, SPECTRA_LIMIT), norm="ortho").abs().mean(dim=0)
    rendered = torch.fft.rfft2(squash.to_z(end.rgb.flatten(0, 1)), norm="ortho").abs()
    inner = (slice(None), slice(1, 8), slice(1, 8))  # not the DC row or the Nyquist column
    for image in rendered:
        assert torch.allclose(image[inner], mean[inner], atol=1e-3)


def test_a_data_scaled_fourier_render_takes_the_real_images_spectral_fall_off() -> None:
    net, colour = TinyNet(), _colour()
    coarse = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    smooth = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bicubic", align_corners=False)
    real = (0.6 * smooth + 0.2).clamp(0, 1)  # low-pass images: a spectrum far steeper than 1/f
    settings = {**FAST, "steps": 30, "augment": False}
    plain = render(net, [0, 3], colour=colour, **settings)
    data = render(net, [0, 3], colour=colour, spectra=real, fourier_scale="data", **settings)
    start = render(net, [0, 3], colour=colour, spectra=real, fourier_scale="data", **{**settings, "steps": 0})
    assert (data.values > start.values + 0.3).all(), (start.values, data.values)

    def high_share(rgb: Tensor) -> float:  # the share of the images' contrast above a quarter cycle per pixel
        z = ColourSquash(colour).to_z(rgb.flatten(0, 1))
        power = torch.fft.rfft2(z, norm="ortho").abs().square()
        ac = power.sum() - power[..., 0, 0].sum()  # all but the mean colour
        return float(power[..., fourier_frequencies(16, 16) > 0.25].sum() / ac)

    assert high_share(data.rgb) < 0.5 * high_share(plain.rgb), (high_share(data.rgb), high_share(plain.rgb))
    with pytest.raises(ValueError, match="fourier_scale='data' takes real images"):
        render(net, 0, colour=colour, fourier_scale="data", **settings)


def test_a_layout_start_adds_a_real_images_layout_to_each_pictures_random_start() -> None:
    net, colour = TinyNet(), _colour()
    generator = torch.Generator().manual_seed(5)
    # Photographs of a kind: each its own mean colour and a vertical colour gradient (a sky above a ground).
    ground = torch.rand(6, 3, 1, 1, generator=generator) * 0.5 + 0.25
    gradient = torch.linspace(-0.15, 0.15, 16).view(1, 1, 16, 1) * torch.randn(
        6, 3, 1, 1, generator=generator
    )
    real = (ground + gradient).expand(6, 3, 16, 16).clamp(0, 1)
    settings = {**FAST, "steps": 0, "augment": False}
    noise = render(net, [0, 3], colour=colour, **settings)
    layout = render(net, [0, 3], colour=colour, spectra=real, init_layout=1.0, **settings)
    squash = ColourSquash(colour)
    added = squash.to_z(layout.rgb.flatten(0, 1)) - squash.to_z(noise.rgb.flatten(0, 1))
    # The same random start (drawn first), plus one real image's layout each, no two pictures the same image.
    whole = squash.to_z(real, SPECTRA_LIMIT)
    order = [int((whole - picture).flatten(1).abs().amax(dim=1).argmin()) for picture in added]
    assert len(set(order)) == 4, order
    cycles = fourier_frequencies(16, 16) * 16
    low = torch.fft.rfft2(whole[order], norm="ortho") * (cycles <= 2.25)
    assert torch.allclose(added, torch.fft.irfft2(low, s=(16, 16), norm="ortho"), atol=1e-3)
    # The pictures' mean colours spread as the photographs' do, where the noise start keeps them at the mean.
    spread = {
        name: float(r.rgb.flatten(0, 1).mean(dim=(2, 3)).std(dim=0).mean())
        for name, r in (("noise", noise), ("layout", layout))
    }
    assert spread["noise"] < 0.01 < 0.05 < spread["layout"], spread
    # The optimisation starts from there and raises the targets.
    trained = render(net, [0, 3], colour=colour, spectra=real, init_layout=1.0, **{**settings, "steps": 30})
    assert (trained.values > layout.values + 0.3).all(), (layout.values, trained.values)
    with pytest.raises(ValueError, match="init_layout=1 takes real images"):
        render(net, 0, colour=colour, init_layout=1.0, **settings)


def test_diversity_until_turns_the_term_off_after_its_fraction_of_the_steps() -> None:
    net = TinyNet()

    def gradients(**settings) -> list[Tensor]:
        seen: list[Tensor] = []

        class Recording(torch.optim.Adam):
            def step(self, closure=None):  # type: ignore[override]
                seen.append(self.param_groups[0]["params"][0].grad.clone())
                return super().step(closure)

        render(net, 0, optimizer=lambda params, lr: Recording(params, lr=lr), **settings)
        return seen

    settings = {**FAST, "steps": 20, "augment": False, "images_per_target": 3}
    diverse = {**settings, "diversity_layer": "features.relu1", "diversity_weight": 5.0}
    always, half = gradients(**diverse), gradients(**diverse, diversity_until=0.5)
    plain = gradients(**settings)
    # The first 10 steps are those of the diverse render, step by step; from step 10 the objective changes.
    assert all(torch.equal(a, h) for a, h in zip(always[:10], half[:10], strict=True))
    assert not torch.allclose(always[10], half[10])
    assert not torch.allclose(plain[0], half[0])
    with pytest.raises(ValueError, match=r"diversity_until must be a finite number in \(0, 1\], got 0.0"):
        RenderConfig(diversity_until=0.0)


def test_a_phase_render_without_real_images_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"parameterisation='phase' .* pass render\(\.\.\., spectra="):
        render(TinyNet(), colour=_colour(), **{**FAST, "parameterisation": "phase"})


def test_a_colour_weight_pulls_the_pictures_colours_towards_the_datas_and_chunking_keeps_them() -> None:
    net, colour = TinyNet(), _colour()
    real = colour.to_rgb(torch.randn(200, 3, 16, 16, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    settings = {**FAST, "steps": 30}
    targets = [0, 1, 2, 3]
    distances = {
        weight: colour_distance(
            render(net, targets, colour=colour, **{**settings, "colour_weight": weight}).rgb.flatten(0, 1),
            real,
        )
        for weight in (0.0, 1.0, 10.0)
    }
    assert distances[10.0] < distances[1.0] < distances[0.0], distances
    assert distances[10.0] < 0.75 * distances[0.0], distances
    whole = render(net, targets, colour=colour, **{**settings, "colour_weight": 10.0})
    chunked = render(net, targets, colour=colour, max_batch_size=2, **{**settings, "colour_weight": 10.0})
    assert torch.allclose(whole.rgb, chunked.rgb, atol=1e-5)
    # The targets still rise: the prior shares the objective, it does not replace it.
    start = render(net, targets, colour=colour, **{**settings, "colour_weight": 10.0, "steps": 0})
    assert (whole.values > start.values).all(), (start.values, whole.values)
    # A basis that says nothing of the data's colours (the identity: mean 0) leaves the prior out.
    plain = render(net, targets, colour=ColourTransform.identity(), **settings)
    weighted = render(net, targets, colour=ColourTransform.identity(), **{**settings, "colour_weight": 10.0})
    assert torch.equal(plain.rgb, weighted.rgb)
