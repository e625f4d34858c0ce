"""``featvis render`` on a fixed tiny checkpoint writes the same bytes as before the redesign of issue 10.

The hashes were taken from commit 37754b4 (before the redesign) with
``featvis render --ckpt tests/data/tiny_classifier.ckpt --out OUT --seed 7`` (the defaults were then
``--decay 1.0 --steps 128 --lr 0.005`` and no colour prior; the test passes them) on a CPU whose ``autocast: auto``
resolves to float32 (no fast bf16). A CPU with fast bf16 renders in bfloat16, whose rounding differs by design,
so the comparison only applies where the render runs in float32.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from featvis.cli import render_main
from featvis.engine import resolve_autocast

CKPT = Path(__file__).parent / "data" / "tiny_classifier.ckpt"

GOLDEN = {
    "airplane/0.png": "cb30ca3712a6eddab50ce6835d1cbbc99dcb38a3061e7de505dca0b541557497",
    "airplane/1.png": "d30b9abecddf2553bb59fea6a3b753a4f7de22aa392ebaa328f4610b8a516e3e",
    "airplane/2.png": "7567fd6fab03f0ddbceb685deff6f662e6f5353e25054139ad1b9cd0dc579129",
    "airplane/3.png": "8d4d9959a76c90be76c51671050d60b9baf23005f21f47f881270f1714bf6ab1",
    "automobile/0.png": "b4d0df9cec16b37cc3c4577579e870f4ce8a84db505af9205178f4394a9c6ffe",
    "automobile/1.png": "e278673fbcf5a1822072c40774dafb8cf928c34df20de681c67b01fa6a3358c2",
    "automobile/2.png": "396274a04084df7a86416467a8929376b744d9aaad53fe6a86c1ce6880a81bb7",
    "automobile/3.png": "2960ab40347bb2e6774ce1a66e2f1b17ceb9b44f2ad8784d5cf11ee83fbf1fa9",
    "bird/0.png": "8842d58aeead62b6f105486e6b4644c1884a416eaa6dbaefd019b8b8eff6b724",
    "bird/1.png": "b2b2b0f51ac75bd3bbf3f47969042a7a55d29d2a671df5a4218f5062009c622b",
    "bird/2.png": "49e7677ae6977ca5931248523f5e4b4c242c0f5b99f43302cfe65b489b7d9ccd",
    "bird/3.png": "718675f29d9ac1fc84f7f7330c0790636549067124f19391a2a23114a3bc3045",
    "cat/0.png": "0f9a65bfd3a6b02d1ee8b443234e8276ea7a8e080ba71c0d85905c31f7e49661",
    "cat/1.png": "9a5d4e1ec7665dd5029a161aea908b03c3094a51c3a86d6ee6cbcd3e0a95fa2a",
    "cat/2.png": "4ac5175a67c279baa4ce084cf027c1fc630d9cefd299d31c424cc88ae090b0ae",
    "cat/3.png": "97176370ae6d049f59c706a658b36bf2cf110db30a2c826b7d4a4ff084950c8f",
    "deer/0.png": "db43286dad404a90b836e5fc0e6a06edd1521ebcc83040b915a4b9cf0141fdcc",
    "deer/1.png": "a598bc3995901488acdb5792e7929dea3d57a0fb8633f7ce25ac80b118462d8a",
    "deer/2.png": "273443896ef1403837bf517d10599aef139bd95ee2cbad441935863d6ace4474",
    "deer/3.png": "5c50fd2f2f10b9d22c9600a3c9e11cd90847507bf852463ec61e94f73d67fcf6",
    "dog/0.png": "c5a5441998b65f44318cddd64b406b2da9ef40f727c4181bf783eb0a7344296d",
    "dog/1.png": "8fcfdf094a3893179117861026523d1e5f2aa0159bd37a45d13600975e9f838a",
    "dog/2.png": "533fdda8ef22537d9c3655d351a826904c11f3de57600203a2378b756830ae70",
    "dog/3.png": "41cdabce479557258f4eb6c240cb3623ca7ea2f55c9173460f4af69694d1472c",
    "frog/0.png": "3909d437fbfea8dbb7d2ee8d97d4f5ec82838bae4f0a6fd37399dd9c5c862f4b",
    "frog/1.png": "5b0fa57d5762f0ce518802d1bbf17f445fc5d5935d56280d4788766d137b65b4",
    "frog/2.png": "8bbbb93fe3fb68a2a6ab0dc49322a8e42a2bed2d6eef48a018185178841c999a",
    "frog/3.png": "a7c831f8c0007cf4043c51c1690e3a67407b27da5dcf0afd5d54926fdc3b7e3b",
    "grid.png": "d5cbe7a2a3792a6b0f4a19575a051ea47c94a8bbf10dd1a29ca41e1bf7786e10",
    "horse/0.png": "edd55484b4c07e04ee5ccbcf5999d437c205b9df81716730b2d14f5c0546cda5",
    "horse/1.png": "76f2eb93f8a7a7f6520a1efc8762ef59e04928101cebe8d0efd214b19b4471c5",
    "horse/2.png": "38798c71c0ff80b8a05eb1826178637c65ba4c1adf1cda86e23a3d2c3cfc08d6",
    "horse/3.png": "038839997638c8ee0b51efd9e6c559eb7e9dd256ed7633a4460f3b595b24e4ea",
    "ship/0.png": "3a5eac2be54d45b2176de24f7f447c63553894464032a0c03593cfa5fad25b72",
    "ship/1.png": "e0f228d5bd3ff3cb1eff02620531559a28463157ef41e354c79b818bf3e05cbb",
    "ship/2.png": "73d40510b150e96231f405cd30aef4c32a358d1cd450389730dbbd51fb5841bd",
    "ship/3.png": "1350300382f5b275893fd8e66b4909666427649a09e0d0736636d66ea60037d5",
    "truck/0.png": "efdc88d0070c7f0437023f822ecc42622f96e8491791149762e803bb85098b36",
    "truck/1.png": "343398800f1b3e30f2d03c71ba5b9f78fe9805835163688eadc5b5cd7486bd3a",
    "truck/2.png": "d75a1a98ee7f6560a51b2c6fc98f47c90df3fae1a6edeff0b9363cf47a2a0d0e",
    "truck/3.png": "89ab9b74bc78dbf24fff5bfd1887f482700ca1f6f9cd199b8e7b0fe10198b215",
}


def test_render_writes_the_recorded_bytes(tmp_path: Path) -> None:
    if resolve_autocast("auto", torch.device("cpu"), torch.float32) is not None:
        pytest.skip("this CPU renders in bfloat16 under autocast 'auto'; the hashes are float32 renders")
    out = tmp_path / "out"
    # The defaults of the time: 1/f, 128 steps at 0.005 (1/f^1.25, 96 steps at 0.0067 since issue 15, and 80
    # steps at 0.008 since the tenth session).
    args = ["--ckpt", str(CKPT), "--out", str(out), "--seed", "7", "--quiet"]
    args += ["--decay", "1.0", "--steps", "128", "--lr", "0.005", "--colour-weight", "0"]
    assert render_main(args) == 0
    written = {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.png")
    }
    assert written == GOLDEN
