"""Hidden-unit channel sheets: does each visualisation show what its channel detects, and what does a sheet cost?

``--mode quality`` (default), on a ``ClassifierModule`` checkpoint and the CIFAR-10 training images under
``--data-dir`` (a probe set of ``--probe-size`` of them, drawn with ``--seed``), renders the ``--k`` channels of
``--layer`` that each automatic rule picks on that checkpoint (``selectivity``, the default, ``kurtosis`` and
``variance``; see ``featvis.probe.choose_channels``) and ``--k`` channels drawn at random, at the default render
settings, one image each, and reports for each choice:

* **maximisation**: the share of channels whose visualisation excites the channel (its spatial mean
  activation, the objective) more than the channel's top-1 probe example does;
* **agreement**: the share of each visualisation's ``--examples`` nearest probe images (cosine similarity of the
  layer's spatially pooled features) that are also among the channel's top ``--examples``, against a
  random-channel baseline (each visualisation paired with another channel's examples);
* **purity**: the class purity of the channels' top examples (share in the commonest class); for random choice
  also averaged over ``--random-draws`` draws of ``--k`` channels, and over all channels of the layer.

``--mode cost`` times one channel sheet as the callback would make it (probe set, activations, channel choice,
one batched render at the default settings, the composed sheet) on the given checkpoint, else on an untrained
default model (the same cost), with real probe images when ``--data-dir`` is given, else random ones.
``--mode warm`` asks what a warm start (``SheetConfig(warm_start=True)``) saves between two consecutive epochs:
``--ckpt-before`` (epoch A) and ``--ckpt`` (epoch B) of one run. It chooses the ``--k`` channels of ``--layer``
with the default rule on B, renders them cold on A at ``--steps`` (the parameters a warm start begins from), then
on B cold at ``--steps`` and warm-started from A's parameters at 1/8, 1/4, 1/2 and all of ``--steps``, one image
per channel. Per row: steps, seconds of the render, the mean channel objective relative to B's cold render, and
the robustness relative to B's cold render (the channel objective averaged over 8 fresh random shifts, zooms and
rotations of each image, ``featvis.quality.metrics.random_affine``, drawn from a generator seeded with ``--seed``
anew for every row, so every row meets the same transforms); a ``start`` row gives A's images as they are,
measured on B. It names the smallest fraction whose objective and robustness both reach 0.98 of cold.

Heavy at the default settings on a shared CPU; run from the repository root::

    python -m benchmarks.hidden_units --ckpt path/to/last.ckpt --data-dir data
    python -m benchmarks.hidden_units --mode cost --epoch-seconds 300
    python -m benchmarks.hidden_units --mode warm --ckpt-before A.ckpt --ckpt B.ckpt --data-dir data
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import make_parser, run_script, write_json
from benchmarks.reference_models import cifar_folder
from featvis.cifar import read_split
from featvis.engine import RenderConfig
from featvis.hidden import ChannelSheets, SheetConfig
from featvis.model import ClassifierModule, load_classifier
from featvis.probe import ProbeSet, agreement, choose_channels, class_purity, top_examples, unit_activations
from featvis.quality.metrics import random_affine


def load_model(ckpt: str | None) -> ClassifierModule:
    """The checkpoint's classifier in eval mode, or an untrained default one (same architecture, same cost)."""
    return load_classifier(ckpt) if ckpt else ClassifierModule().eval()


def read_probe(data_dir: str | None, model: ClassifierModule, size: int, seed: int) -> ProbeSet:
    """``size`` CIFAR-10 training images under ``data_dir`` (seeded draw); random uint8 images without it."""
    if data_dir is None:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return ProbeSet.from_tensors(images, None, seed, size, model.colour)
    images, labels = read_split(cifar_folder(data_dir), train=True)
    return ProbeSet.from_tensors(images, labels, seed, size, model.colour)


def score_sheet(
    model: ClassifierModule, layer: str, info: dict[str, Any], probe_features: Tensor, n: int, seed: int
) -> dict[str, Any]:
    """Maximisation, agreement (with its baseline) and purity of one layer's rendered channels.

    Args:
        model: the classifier the sheet was rendered from.
        layer: the layer's name.
        info: the layer's entry of :meth:`ChannelSheets.render`.
        probe_features: ``(P, C)`` the layer's pooled features of the probe images.
        n: neighbours and examples compared by the agreement.
        seed: seed of the agreement's random-channel baseline.
    """
    rgb = info["rgb"]
    units, per_unit = rgb.shape[:2]
    vis_features = unit_activations(model, layer, model.colour.to_model(rgb.flatten(0, 1)))
    agree = agreement(
        vis_features.reshape(units, per_unit, -1), probe_features, info["example_indices"], n, seed
    )
    vis, top1 = info["values"].mean(dim=1), info["example_values"][:, 0]
    return {
        "channels": info["channels"],
        "maximisation": float((vis > top1).float().mean()),
        "agreement": float(agree["overlap"].mean()),
        "agreement_baseline": float(agree["baseline"].mean()),
        "purity": float(info["purity"].mean()),
        "per_channel": {
            "vis_value": vis.tolist(),
            "top1_value": top1.tolist(),
            "agreement": agree["overlap"].tolist(),
            "purity": info["purity"].tolist(),
        },
    }


#: The automatic rules compared with random choice ("change" needs two checkpoints).
RULES = ("selectivity", "kurtosis", "variance")


def quality(
    model: ClassifierModule,
    probe: ProbeSet,
    layer: str,
    k: int,
    n: int,
    config: RenderConfig,
    seed: int,
    random_draws: int,
) -> dict[str, Any]:
    """The quality numbers of the automatic rules against random channel choice; see the module docstring."""
    if probe.labels is None:
        raise ValueError("quality mode needs labelled probe images; pass --data-dir.")
    sheets = {
        rule: SheetConfig(layers=[layer], k=k, examples=n, probe_size=len(probe), rule=rule) for rule in RULES
    }
    name = ChannelSheets(sheets[RULES[0]]).check(model, config.size)[0]
    probe_features = unit_activations(model, name, probe.images)
    width = probe_features.shape[1]
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.randperm(width, generator=generator)[:k].sort().values.tolist()
    sheets["random"] = SheetConfig(layers=[name], channels=drawn, examples=n, probe_size=len(probe))
    result: dict[str, Any] = {"layer": name, "channels_in_layer": width, "k": k, "examples": n}
    for rule, sheet_config in sheets.items():
        chosen = ChannelSheets(sheet_config)
        chosen.setup(model, probe, model.colour, seed, config.size)
        info = chosen.render(model, model.colour, None, config, scale=1)[name]
        result[rule] = score_sheet(model, name, info, probe_features, n, seed)
        result[rule]["seconds"] = info["seconds"]
    assert probe.labels is not None
    purity = class_purity(top_examples(probe_features, range(width), n), probe.labels)
    draws = [purity[torch.randperm(width, generator=generator)[:k]].mean() for _ in range(random_draws)]
    result["purity_random_draws"] = float(torch.stack(draws).mean())
    result["purity_all_channels"] = float(purity.mean())
    return result


def cost(
    model: ClassifierModule,
    data_dir: str | None,
    layer: str,
    k: int,
    n: int,
    size: int,
    seed: int,
    steps: int,
) -> dict:
    """Seconds of one channel sheet at the default render settings but ``steps``: probe set, setup, render call."""
    config = RenderConfig(image_size=32, steps=steps)
    start = time.perf_counter()
    probe = read_probe(data_dir, model, size, seed)
    read = time.perf_counter() - start
    sheets = ChannelSheets(SheetConfig(layers=[layer], k=k, examples=n, probe_size=size))
    start = time.perf_counter()
    sheets.setup(model, probe, model.colour, seed, config.size)
    setup = time.perf_counter() - start
    info = next(iter(sheets.render(model, model.colour, None, config).values()))
    return {
        "layer": sheets.layers[0] if sheets.layers else layer,
        "channels": len(info["channels"]),
        "steps": config.steps,
        "probe_read": read,
        "setup": setup,
        "render": info["render_seconds"],
        "sheet_call": info["seconds"],
        "total": read + setup + info["seconds"],
    }


#: Fractions of the default steps the warm-started renders take, and the share of cold they must reach.
FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)
ENOUGH = 0.98
#: Random transforms per image of the robustness.
REPEATS = 8


def robustness(model: ClassifierModule, layer: str, channels: list[int], rgb: Tensor, seed: int) -> Tensor:
    """``(U,)`` each channel's objective on its images, averaged over images and :data:`REPEATS` random transforms.

    Args:
        model: the network the images are measured on.
        layer: the channels' layer.
        channels: the ``U`` channel indices, one per row of ``rgb``.
        rgb: ``(U, K, 3, H, W)`` images in [0, 1].
        seed: seed of the private generator of the transforms (the same seed, the same transforms).
    """
    generator = torch.Generator().manual_seed(seed)
    units, per_unit = rgb.shape[:2]
    images = rgb.flatten(0, 1)
    rows, columns = torch.arange(len(images)), torch.tensor(channels).repeat_interleave(per_unit)
    total = torch.zeros(len(images))
    for _ in range(REPEATS):
        moved = random_affine(images, generator)
        total += unit_activations(model, layer, model.colour.to_model(moved))[rows, columns]
    return (total / REPEATS).view(units, per_unit).mean(dim=1)


def warm(
    before: ClassifierModule,
    after: ClassifierModule,
    probe: ProbeSet,
    layer: str,
    k: int,
    n: int,
    config: RenderConfig,
    seed: int,
) -> dict[str, Any]:
    """Cold renders against renders warm-started from the epoch before; see the module docstring."""
    rule = SheetConfig().rule
    name = ChannelSheets(SheetConfig(layers=[layer], k=k, examples=n)).check(after, config.size)[0]
    channels = choose_channels(unit_activations(after, name, probe.images), k, rule, examples=n)
    # stale=0: the warm rows measure the warm start itself; the default guard's decision is reported apart.
    sheet = SheetConfig(
        layers=[name], channels=channels, examples=n, probe_size=len(probe), warm_start=True, stale=0.0
    )

    def sheet_render(model: ClassifierModule, state: dict | None, steps: int | None) -> dict[str, Any]:
        sheets = ChannelSheets(sheet)
        if state is not None:
            sheets.load_state_dict(state)
        sheets.setup(model, probe, model.colour, seed, config.size)
        info = sheets.render(model, model.colour, None, config, scale=1, steps=steps)[name]
        return info | {"state": sheets.state_dict()}

    start = sheet_render(before, None, None)
    cold = sheet_render(after, None, None)
    cold_objective = float(cold["values"].mean())
    cold_robustness = float(robustness(after, name, channels, cold["rgb"], seed).mean())

    def row(kind: str, fraction: float, steps: int, seconds: float, values: Tensor, rgb: Tensor) -> dict:
        robust = float(robustness(after, name, channels, rgb, seed).mean())
        return {
            "start": kind,
            "fraction": fraction,
            "steps": steps,
            "seconds": seconds,
            "objective": float(values.mean()),
            "robustness": robust,
            "objective_rel": float(values.mean()) / cold_objective,
            "robustness_rel": robust / cold_robustness,
        }

    as_is = unit_activations(after, name, after.colour.to_model(start["rgb"].flatten(0, 1)))
    as_is = as_is[torch.arange(len(channels)), channels].view(len(channels), 1)  # one image per channel
    # The stale guard (featvis.warm): each channel's activation on its last image, now against when rendered.
    kept = as_is[:, 0] / start["state"]["sheets_warm"]["values"].view(len(channels), -1).mean(dim=1)
    rows = [
        row("start", 0.0, 0, 0.0, as_is, start["rgb"]),
        row("cold", 1.0, cold["steps"], cold["render_seconds"], cold["values"], cold["rgb"]),
    ]
    for fraction in FRACTIONS:
        info = sheet_render(after, start["state"], max(1, round(fraction * config.steps)))
        if not info["warm"]:
            raise RuntimeError("the warm-started render started cold; the benchmark's setup is wrong.")
        rows.append(row("warm", fraction, info["steps"], info["render_seconds"], info["values"], info["rgb"]))
    enough = [
        r["fraction"]
        for r in rows
        if r["start"] == "warm" and r["objective_rel"] >= ENOUGH and r["robustness_rel"] >= ENOUGH
    ]
    return {
        "layer": name,
        "channels": channels,
        "steps": config.steps,
        "rows": rows,
        "smallest_fraction": min(enough) if enough else None,
        "kept_share": [float(v) for v in kept],
        "guard": "warm" if float(kept.min()) >= SheetConfig().stale else "cold",
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its numbers.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        quality mode: ``layer``, ``channels_in_layer``, ``k``, ``examples``, one entry per rule of :data:`RULES`
        and ``random`` (each
        ``channels``, ``maximisation``, ``agreement``, ``agreement_baseline``, ``purity``, ``seconds`` and
        ``per_channel`` lists ``vis_value``, ``top1_value``, ``agreement``, ``purity``), ``purity_random_draws``,
        ``purity_all_channels``; cost mode: ``layer``, ``channels``, ``steps`` and the seconds ``probe_read``, ``setup``, ``render``, ``sheet_call``,
        ``total`` (and ``epoch_share`` with ``--epoch-seconds``); warm mode: ``layer``, ``channels``, ``steps``
        (the default steps), ``rows`` (each ``start``: ``"start"`` (A's images measured on B), ``"cold"`` or
        ``"warm"``; ``fraction``, ``steps``, ``seconds``, ``objective``, ``robustness`` and the last two relative
        to the cold row, ``objective_rel`` and ``robustness_rel``), ``smallest_fraction`` (None when no
        warm row reaches 0.98 of cold in both) and ``threads``.
    """
    defaults, sheet = RenderConfig(), SheetConfig()
    parser = make_parser("benchmarks.hidden_units", __doc__)
    parser.add_argument("--mode", choices=["quality", "cost", "warm"], default="quality")
    parser.add_argument(
        "--ckpt", default=None, help="ClassifierModule checkpoint; default: untrained network"
    )
    parser.add_argument("--ckpt-before", default=None, help="warm mode: the checkpoint of the epoch before")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py")
    parser.add_argument("--layer", default="auto", help="layer name, or auto (the last spatial block)")
    parser.add_argument("--k", type=int, default=sheet.k, help="channels per sheet")
    parser.add_argument("--examples", type=int, default=sheet.examples, help="top examples per channel")
    parser.add_argument("--probe-size", type=int, default=sheet.probe_size, help="probe images")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="render steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-draws", type=int, default=100, help="random channel sets for the purity")
    parser.add_argument("--epoch-seconds", type=float, default=None, help="a training epoch's seconds here")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.mode == "warm" and not (args.ckpt and args.ckpt_before):
        raise ValueError("warm mode needs --ckpt-before and --ckpt (checkpoints of consecutive epochs).")
    model = load_model(args.ckpt)
    source = args.ckpt or "untrained default network"
    if args.mode == "warm":
        probe = read_probe(args.data_dir, model, args.probe_size, args.seed)
        config = defaults.replace(image_size=tuple(probe.images.shape[-2:]), steps=args.steps)
        result = warm(
            load_model(args.ckpt_before), model, probe, args.layer, args.k, args.examples, config, args.seed
        )
        print(
            f"{args.ckpt_before} -> {source}: {len(result['channels'])} channels of {result['layer']}, "
            f"{result['threads']} threads; relative to the cold render at {result['steps']} steps"
        )
        print("start  fraction  steps  seconds  objective  robustness")
        for row in result["rows"]:
            print(
                f"{row['start']:6} {row['fraction']:8.3f}  {row['steps']:5d}  {row['seconds']:7.2f}"
                f"  {row['objective_rel']:9.3f}  {row['robustness_rel']:10.3f}"
            )
        print(f"smallest fraction reaching {ENOUGH} of cold in both: {result['smallest_fraction']}")
        shares = result["kept_share"]
        print(
            f"stale guard (stale={SheetConfig().stale}): the last images keep {min(shares):.2f}-{max(shares):.2f} "
            f"of their activation on the new model -> the callback's render starts {result['guard']}"
        )
    elif args.mode == "cost":
        result = cost(
            model, args.data_dir, args.layer, args.k, args.examples, args.probe_size, args.seed, args.steps
        )
        if args.epoch_seconds:
            result["epoch_share"] = result["total"] / args.epoch_seconds
        share = (
            f" = {100 * result['epoch_share']:.1f}% of a {args.epoch_seconds:g} s epoch"
            if args.epoch_seconds
            else ""
        )
        print(
            f"{source}: a {result['channels']}-channel sheet of {result['layer']} ({result['steps']} steps, "
            f"{args.probe_size} probe images, {torch.get_num_threads()} threads): {result['total']:.1f} s{share} "
            f"(probe read {result['probe_read']:.1f}, setup {result['setup']:.1f}, render {result['render']:.1f}, "
            f"rest of the sheet call {result['sheet_call'] - result['render']:.1f})"
        )
    else:
        probe = read_probe(args.data_dir, model, args.probe_size, args.seed) if args.data_dir else None
        if probe is None:
            raise ValueError("quality mode needs --data-dir (a folder holding cifar-10-batches-py).")
        config = defaults.replace(image_size=tuple(probe.images.shape[-2:]), steps=args.steps)
        result = quality(
            model, probe, args.layer, args.k, args.examples, config, args.seed, args.random_draws
        )
        print(
            f"{source}: layer {result['layer']} ({result['channels_in_layer']} channels), k={args.k}, n={args.examples}"
        )
        print("choice       maximisation  agreement (baseline)  purity  seconds")
        for rule in (*RULES, "random"):
            row = result[rule]
            print(
                f"{rule:12}{row['maximisation']:12.2f}  {row['agreement']:9.2f} ({row['agreement_baseline']:.2f})"
                f"      {row['purity']:6.2f}  {row['seconds']:7.2f}"
            )
        print(
            f"purity of random channel sets ({args.random_draws} draws): {result['purity_random_draws']:.3f}; "
            f"all channels: {result['purity_all_channels']:.3f}"
        )
    write_json(result, args.json)
    return result


if __name__ == "__main__":
    run_script(main)
