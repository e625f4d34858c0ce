"""Carry CIFAR-10 to a lent GPU machine: the python batches as lossless WebP mosaics, in two halves.

The device tool sends only the checkout (``../shared`` stays behind) and at most 64 MiB per call, and the six
batch files are 177 MiB. As lossless WebP mosaics (1,000 images per file) they take 86 MiB, byte-identical after
decoding, so they travel in two calls of about 43 MiB each (see ``tools/device/README.md``)::

    python tools/device/pack_cifar.py pack ../shared/cifar10/cifar-10-batches-py .gpudata1 .gpudata2
    python3 tools/device/pack_cifar.py unpack .gpudata1 /tmp/cifar/cifar-10-batches-py   # on the GPU machine

``pack`` takes about 3 minutes on two cores and checks the round trip.
"""

from __future__ import annotations

import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HALVES = (("test_batch", "data_batch_1", "data_batch_2"), ("data_batch_3", "data_batch_4", "data_batch_5"))
PER_FILE, PER_ROW = 1000, 100  # images per mosaic, images per mosaic row


def _read(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


def pack(source: Path, first: Path, second: Path) -> None:
    """Write each batch of ``source`` as WebP mosaics plus a JSON of its other entries, in two folders."""
    for folder, names in zip((first, second), HALVES, strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            content = _read(source / name)
            images = np.asarray(content["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            for index in range(0, len(images), PER_FILE):
                block = images[index : index + PER_FILE]
                rows = -(-len(block) // PER_ROW)  # a last, partial row is padded with black tiles
                block = np.concatenate([block, np.zeros((rows * PER_ROW - len(block), 32, 32, 3), np.uint8)])
                mosaic = block.reshape(rows, PER_ROW, 32, 32, 3).transpose(0, 2, 1, 3, 4)
                Image.fromarray(mosaic.reshape(rows * 32, PER_ROW * 32, 3)).save(
                    folder / f"{name}_{index // PER_FILE:02d}.webp",
                    "WEBP",
                    lossless=True,
                    quality=100,
                    method=4,
                )
            rest = {key: value for key, value in content.items() if key != "data"}
            (folder / f"{name}.json").write_text(json.dumps(rest))
        # batches.meta (the class names) is small: both halves carry it, so either call can start the folder.
        (folder / "batches.meta").write_bytes((source / "batches.meta").read_bytes())


def unpack(folder: Path, target: Path) -> None:
    """Rebuild the python batches of one packed half into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for meta in sorted(folder.glob("*.json")):
        blocks = []
        for part in sorted(folder.glob(f"{meta.stem}_*.webp")):
            mosaic = np.asarray(Image.open(part).convert("RGB"))
            rows = mosaic.shape[0] // 32
            tiles = mosaic.reshape(rows, 32, PER_ROW, 32, 3).transpose(0, 2, 1, 3, 4)
            blocks.append(tiles.reshape(rows * PER_ROW, 32, 32, 3))
        content = json.loads(meta.read_text())
        images = np.concatenate(blocks)[: len(content["labels"])]  # drop the padding tiles
        content["data"] = images.transpose(0, 3, 1, 2).reshape(-1, 3072).copy()
        with open(target / meta.stem, "wb") as handle:
            pickle.dump(content, handle)
        print(f"{target / meta.stem}: {content['data'].shape[0]} images", flush=True)
    (target / "batches.meta").write_bytes((folder / "batches.meta").read_bytes())


def round_trip_changes(source: Path, first: Path, second: Path, scratch: Path) -> list[str]:
    """Unpack both halves into ``scratch`` and name the batches whose images or labels differ from ``source``."""
    for half in (first, second):
        unpack(half, scratch)
    changed = []
    for name in (n for names in HALVES for n in names):
        a, b = _read(source / name), _read(scratch / name)
        if not (np.array_equal(np.asarray(a["data"]), b["data"]) and a["labels"] == b["labels"]):
            changed.append(name)
    return changed


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[0] == "pack":
        source, first, second = map(Path, argv[1:])
        pack(source, first, second)
        with tempfile.TemporaryDirectory() as check:
            changed = round_trip_changes(source, first, second, Path(check))
        if changed:
            sys.exit(f"error: the round trip changed {', '.join(changed)}; do not use the packed copy.")
        print("round trip: byte-identical images and labels")
    elif len(argv) == 3 and argv[0] == "unpack":
        unpack(Path(argv[1]), Path(argv[2]))
    else:
        sys.exit("usage: pack_cifar.py pack SOURCE HALF1 HALF2 | unpack HALF TARGET")


if __name__ == "__main__":
    main(sys.argv[1:])
