"""Make a CUDA copy of the airbench94 CPU anchor, changing only where its tensors live.

``../shared/anchors/airbench94_cpu.py`` keeps everything on the CPU. This writes a copy that moves the data, the
net and every tensor it creates to ``--device`` (default cuda), runs bf16 autocast there, and synchronises the GPU
before each timer read; the recipe itself is untouched. Each edit must match exactly once, so a changed anchor
fails loudly here instead of running half-ported::

    python tools/device/anchor_to_cuda.py ../shared/anchors/airbench94_cpu.py .gpu/anchor_gpu.py
    python3 .gpu/anchor_gpu.py --data /tmp/cifar --seed 0          # on the GPU machine
"""

from __future__ import annotations

import sys
from pathlib import Path

EDITS = [
    (
        'p.add_argument("--seed", type=int, default=0)',
        'p.add_argument("--seed", type=int, default=0)\np.add_argument("--device", default="cuda")',
    ),
    (
        'xte, yte = load(["test_batch"])',
        'xte, yte = load(["test_batch"])\nDEV = torch.device(a.device)\n'
        "xtr, ytr, xte, yte = xtr.to(DEV), ytr.to(DEV), xte.to(DEV), yte.to(DEV)",
    ),
    (
        "MEAN = torch.tensor((0.4914, 0.4822, 0.4465))",
        "MEAN = torch.tensor((0.4914, 0.4822, 0.4465), device=DEV)",
    ),
    (
        "STD = torch.tensor((0.2470, 0.2435, 0.2616))",
        "STD = torch.tensor((0.2470, 0.2435, 0.2616), device=DEV)",
    ),
    (
        "net = net.to(memory_format=torch.channels_last)",
        "net = net.to(device=DEV, memory_format=torch.channels_last)",
    ),
    (
        "flip_mask = (torch.rand(len(Xtr)) < 0.5).view(-1, 1, 1, 1)",
        "flip_mask = (torch.rand(len(Xtr)) < 0.5).view(-1, 1, 1, 1).to(DEV)",
    ),
    (
        "sh = torch.randint(-r, r + 1, size=(len(imgs), 2))",
        "sh = torch.randint(-r, r + 1, size=(len(imgs), 2)).to(DEV)",
    ),
    ("out = torch.empty((len(imgs), 3, 32, 32))", "out = torch.empty((len(imgs), 3, 32, 32), device=DEV)"),
    ("perm = torch.randperm(len(imgs))", "perm = torch.randperm(len(imgs)).to(DEV)"),
    ("ts = time.time(); net.train()", "sync(); ts = time.time(); net.train()"),
    ("train_s += time.time() - ts", "sync(); train_s += time.time() - ts"),
    (
        "t0 = time.time(); train_s = 0.0; step = 0",
        'sync = torch.cuda.synchronize if DEV.type == "cuda" else (lambda: None)\n'
        "t0 = time.time(); train_s = 0.0; step = 0",
    ),
    ('recipe="airbench94-cpu"', 'recipe="airbench94-" + DEV.type, seed=a.seed'),
]
# Both autocast sites: bf16 on CUDA; on a CPU (for a dry run of the copy) float32, since AVX2-only CPUs emulate bf16.
AUTOCAST = (
    'torch.autocast("cpu", dtype=torch.bfloat16)',
    'torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=DEV.type == "cuda")',
)


def main(source: str, target: str) -> None:
    text = Path(source).read_text()
    for old, new in EDITS:
        if text.count(old) != 1:
            sys.exit(f"error: {source} has {text.count(old)} copies of {old!r}, expected 1; update EDITS.")
        text = text.replace(old, new)
    if text.count(AUTOCAST[0]) != 2:
        sys.exit(
            f"error: {source} has {text.count(AUTOCAST[0])} bf16 autocast sites, expected 2; update AUTOCAST."
        )
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(text.replace(*AUTOCAST))
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: anchor_to_cuda.py SOURCE TARGET")
    main(*sys.argv[1:])
