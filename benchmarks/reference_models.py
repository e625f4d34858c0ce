"""Reference classifiers for scoring feature visualisations, and a plain PyTorch loop that trains them.

The visualisations are optimised against featvis's ``SpeedNet`` (max pooling, GELU, decorrelated colour input).
To tell real class evidence from features that only fool that one network, they are scored by classifiers of
different design: a small pre-activation ResNet and a VGG-style net, both with ReLU and average pooling only.
Both take RGB in [0, 1] and normalise inside with the training set's per-channel mean and std (stored as buffers),
so they do not depend on featvis's colour space, and both have a ``features(x)`` method that returns the
penultimate (globally pooled) features used by ``featvis.quality.metrics.plausibility``.

Training (``train_reference``) uses bf16 autocast on the CPU with channels-last tensors, batched crop-and-flip
augmentation (``featvis.data.random_crop_flip``), SGD with Nesterov momentum, label smoothing and a linear
warm-up then linear decay of the learning rate. On two idle CPU cores an epoch takes about 47 s (preact_resnet)
or 69 s (vgg_avg); 5 epochs reach about 81% test accuracy. With ``device="cuda"`` (``python -m benchmarks.quality
train --device cuda``) 60 epochs took about 130 s each on an H200 with three other jobs on the GPU and reached
0.8945 (preact_resnet) and 0.8894 (vgg_avg). bf16 weight gradients of the square (C -> C) convs
stall for seconds when another process competes for the cores, so train under the CPU lock. Weight initialisation, shuffling and augmentation draw from private generators seeded by ``seed``, so
a run does not touch (or depend on) the global random state.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featvis.cifar import CIFAR10_FOLDER, read_class_names, read_split
from featvis.data import random_crop_flip
from featvis.engine import device_and_dtype
from featvis.model import warmup_linear_decay


class Normalise(nn.Module):
    """Per-channel ``(rgb - mean) / std`` with the statistics stored as buffers.

    Args:
        mean: RGB mean of the training pixels, in [0, 1] units.
        std: RGB standard deviation of the training pixels.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.shape != (3,) or std_t.shape != (3,):
            raise ValueError(f"mean and std need 3 values (R, G, B), got {list(mean_t)} and {list(std_t)}.")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}.")
        self.register_buffer("mean", mean_t.view(1, 3, 1, 1))
        self.register_buffer("std", std_t.view(1, 3, 1, 1))

    def forward(self, rgb: Tensor) -> Tensor:
        return (rgb - self.mean) / self.std


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(bn(conv(relu(bn(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = _conv(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = _conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(out)))


class ReferenceNet(nn.Module):
    """Base of the reference classifiers: ``normalise -> body -> global average pool -> head``.

    Args:
        body: maps normalised images to ``(N, C, h, w)`` feature maps.
        channels: ``C``.
        mean: RGB channel mean for the input normalisation.
        std: RGB channel std for the input normalisation.
        num_classes: number of logits.
    """

    def __init__(
        self, body: nn.Module, channels: int, mean: Sequence[float], std: Sequence[float], num_classes: int
    ) -> None:
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def features(self, rgb: Tensor) -> Tensor:
        """Penultimate features ``(N, C)``: the globally average-pooled output of the body."""
        return self.pool(self.body(self.normalise(rgb))).flatten(1)

    def forward(self, rgb: Tensor) -> Tensor:
        """Logits ``(N, classes)`` for RGB images in [0, 1]."""
        return self.head(self.features(rgb))


class PreActResNet(ReferenceNet):
    """Small pre-activation ResNet with average-pool downsampling (ReLU, no max pooling).

    A 3x3 stem, then per width: BN-ReLU-conv to the new width, 2x2 average pool, one pre-activation residual
    block; a final BN-ReLU, global average pool and linear head.

    Args:
        mean: RGB channel mean of the training set.
        std: RGB channel std of the training set.
        widths: stem width, then one width per stage.
        num_classes: number of logits.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        widths: Sequence[int] = (32, 64, 128, 256),
        num_classes: int = 10,
    ) -> None:
        widths = _check_widths(widths, 2)
        layers: list[tuple[str, nn.Module]] = [("stem", _conv(3, widths[0]))]
        for index, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            stage = nn.Sequential(
                OrderedDict(
                    [
                        ("bn", nn.BatchNorm2d(cin)),
                        ("act", nn.ReLU(inplace=True)),
                        ("conv", _conv(cin, cout)),
                        ("pool", nn.AvgPool2d(2)),
                        ("block", PreActBlock(cout)),
                    ]
                )
            )
            layers.append((f"stage{index}", stage))
        layers += [("bn", nn.BatchNorm2d(widths[-1])), ("act", nn.ReLU(inplace=True))]
        super().__init__(nn.Sequential(OrderedDict(layers)), widths[-1], mean, std, num_classes)


class VGGAvg(ReferenceNet):
    """VGG-style net: 3x3 conv-BN-ReLU layers, 2x2 average pooling after each stage, global average pool.

    Args:
        mean: RGB channel mean of the training set.
        std: RGB channel std of the training set.
        widths: stem width, then two convs per stage at each stage width.
        num_classes: number of logits.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        widths: Sequence[int] = (32, 64, 128, 256),
        num_classes: int = 10,
    ) -> None:
        widths = _check_widths(widths, 2)

        def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(_conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        layers: list[tuple[str, nn.Module]] = [("stem", conv_bn_relu(3, widths[0]))]
        for index, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            # The first stage pools before its second conv to keep the full-resolution cost down.
            inner = [("conv1", conv_bn_relu(cin, cout))]
            if index == 1:
                inner += [("pool", nn.AvgPool2d(2)), ("conv2", conv_bn_relu(cout, cout))]
            else:
                inner += [("conv2", conv_bn_relu(cout, cout)), ("pool", nn.AvgPool2d(2))]
            layers.append((f"stage{index}", nn.Sequential(OrderedDict(inner))))
        super().__init__(nn.Sequential(OrderedDict(layers)), widths[-1], mean, std, num_classes)


def _check_widths(widths: Sequence[int], minimum: int) -> list[int]:
    widths = list(widths)
    if len(widths) < minimum or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must list at least {minimum} positive integers, got {widths}.")
    return widths


ARCHITECTURES: dict[str, Callable[..., ReferenceNet]] = {"preact_resnet": PreActResNet, "vgg_avg": VGGAvg}


def build_reference(
    arch: str,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    widths: Sequence[int] | None = None,
    num_classes: int = 10,
) -> ReferenceNet:
    """Build a reference classifier by name.

    Args:
        arch: ``"preact_resnet"`` or ``"vgg_avg"``.
        mean: RGB channel mean for the input normalisation.
        std: RGB channel std for the input normalisation.
        widths: channel widths; None takes the architecture's defaults.
        num_classes: number of logits.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown reference architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}.")
    kwargs = {"widths": tuple(widths)} if widths is not None else {}
    return ARCHITECTURES[arch](mean, std, num_classes=num_classes, **kwargs)


def cifar_folder(data_dir: str | Path) -> Path:
    """The ``cifar-10-batches-py`` folder given either it or the data_dir that contains it."""
    data_dir = Path(data_dir)
    if (data_dir / CIFAR10_FOLDER).is_dir():
        return data_dir / CIFAR10_FOLDER
    if (data_dir / "test_batch").is_file():
        return data_dir
    raise FileNotFoundError(
        f"no CIFAR-10 data under {data_dir}: expected {data_dir / CIFAR10_FOLDER} (or the batch files "
        "themselves); pass --data-dir pointing at the folder that contains cifar-10-batches-py."
    )


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (RGB input) on uint8 or [0, 1] float images, in float32, eval mode.

    Args:
        model: a reference classifier; its train/eval flags are restored afterwards.
        images: ``(N, 3, H, W)`` uint8 (0..255) or float RGB in [0, 1].
        labels: ``(N,)`` class indices.
        batch_size: images per forward pass.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
    device = device_and_dtype(model)[0]  # batches go where the model is; labels are compared on the CPU
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(device)
                batch = batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()
                logits = model(batch.contiguous(memory_format=torch.channels_last)).cpu()
                correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    finally:
        for module, training in modes:
            module.training = training
    return correct / max(1, images.shape[0])


def train_reference(
    arch: str,
    seed: int,
    data_dir: str | Path,
    epochs: int,
    out_path: str | Path,
    batch_size: int = 512,
    lr: float = 0.4,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.2,
    warmup_fraction: float = 0.2,
    widths: Sequence[int] | None = None,
    bf16: bool = True,
    log: Callable[[str], None] | None = print,
    device: str | torch.device = "cpu",
) -> dict:
    """Train one reference classifier on CIFAR-10 and save it.

    Args:
        arch: ``"preact_resnet"`` or ``"vgg_avg"``.
        seed: seed of the weight initialisation, shuffling and augmentation.
        data_dir: folder that contains ``cifar-10-batches-py`` (or that folder itself).
        epochs: passes over the training set.
        out_path: destination ``.pt`` file (parent folders are created).
        batch_size: training batch size.
        lr: peak learning rate, reached after the warm-up.
        momentum: Nesterov momentum.
        weight_decay: L2 weight decay of conv and linear weights (not of BatchNorm parameters or biases).
        label_smoothing: label smoothing of the cross-entropy loss.
        warmup_fraction: fraction of the steps spent warming the learning rate up from 0; it then decays
            linearly to 0.
        widths: channel widths; None takes the architecture's defaults.
        bf16: train under bf16 autocast (about 2.5x faster than float32 on CPUs with AMX/AVX-512 bf16, about 20x
            slower on CPUs that only emulate it, such as AVX2-only ones).
        log: receives one progress line per epoch; None is silent.
        device: where to train, e.g. ``"cuda"``. The data stays on the CPU and each batch moves there; the
            random draws stay on a CPU generator, so a seed gives the same crops and order on every device.

    Returns:
        The saved record: ``arch``, ``seed``, ``widths``, ``mean``, ``std``, ``class_names``, ``epochs``,
        ``test_accuracy`` (float32 evaluation on the test split), ``train_seconds`` and ``state_dict``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown reference architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}.")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}.")
    folder = cifar_folder(data_dir)
    train_images, train_labels = read_split(folder, train=True)
    test_images, test_labels = read_split(folder, train=False)
    class_names = read_class_names(folder)
    pixels = train_images.float().div_(255)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).tolist()
    del pixels

    # Initialise from a forked global RNG so the run is reproducible and leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_reference(arch, mean, std, widths, num_classes=len(class_names))
    device = torch.device(device)
    model = model.to(device=device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)

    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=momentum,
        nesterov=True,
    )
    count = train_labels.shape[0]
    steps_per_epoch = max(1, count // batch_size)  # drop the last partial batch (BatchNorm needs > 1 image)
    total = steps_per_epoch * epochs
    warmup = max(1, int(warmup_fraction * total))
    step = 0
    start_time = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(count, generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for batch_index in range(steps_per_epoch):
            index = order[batch_index * batch_size : (batch_index + 1) * batch_size]
            images = train_images[index].to(device).float().div_(255)
            images = random_crop_flip(images, 4, True, generator).contiguous(
                memory_format=torch.channels_last
            )
            labels = train_labels[index].to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_linear_decay(step, total, warmup)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(
                    f"{arch} training loss became {float(loss.detach())} at step {step}; lower lr (now {lr})."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * labels.shape[0]
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += labels.shape[0]
        if log is not None:
            log(
                f"{arch} seed {seed} epoch {epoch + 1}/{epochs}: loss {loss_sum / max(1, seen):.4f} "
                f"train acc {correct / max(1, seen):.4f} ({time.perf_counter() - start_time:.0f} s)"
            )
    train_seconds = time.perf_counter() - start_time
    test_accuracy = evaluate(model, test_images, test_labels)
    if log is not None:
        log(f"{arch} seed {seed}: test accuracy {test_accuracy:.4f} after {train_seconds:.0f} s of training")
    record = {
        "arch": arch,
        "seed": seed,
        "widths": [int(w) for w in (widths or _default_widths(arch))],
        "mean": mean,
        "std": std,
        "class_names": class_names,
        "epochs": epochs,
        "test_accuracy": test_accuracy,
        "train_seconds": train_seconds,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    torch.save(record, partial)
    partial.replace(out_path)  # atomic: a reader never sees a half-written file
    return record


def _default_widths(arch: str) -> list[int]:
    import inspect

    return list(inspect.signature(ARCHITECTURES[arch]).parameters["widths"].default)


def load_reference(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ReferenceNet, dict]:
    """Load a reference classifier saved by :func:`train_reference`, in eval mode.

    Args:
        path: the ``.pt`` file.
        map_location: device to load onto.

    Returns:
        The model and the saved record without its state dict (arch, seed, test_accuracy, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"reference model {path} not found; train it with `python -m benchmarks.quality train`."
        )
    record = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(record, dict) or "arch" not in record or "state_dict" not in record:
        raise ValueError(f"{path} is not a reference model written by train_reference (no arch/state_dict).")
    model = build_reference(
        record["arch"], record["mean"], record["std"], record["widths"], len(record["class_names"])
    )
    model.load_state_dict(record["state_dict"])
    model = model.to(map_location).to(memory_format=torch.channels_last).eval()
    info = {key: value for key, value in record.items() if key != "state_dict"}
    return model, info


__all__ = [
    "ARCHITECTURES",
    "Normalise",
    "PreActResNet",
    "ReferenceNet",
    "VGGAvg",
    "build_reference",
    "cifar_folder",
    "evaluate",
    "load_reference",
    "train_reference",
]
