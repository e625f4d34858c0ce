"""featvis.shards: the process group that the render gathers use is destroyed at exit, before finalisation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

# A one-process gloo group. The hook registered first runs last (atexit is last in, first out), so it sees
# whether the group still exists after every later hook, ours included, has run.
_EXIT = """
import atexit, sys
import torch.distributed as dist
atexit.register(lambda: print("initialised at exit:", dist.is_initialized(), flush=True))
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
if sys.argv[1] == "hook":
    from featvis.shards import destroy_process_group_at_exit
    destroy_process_group_at_exit()
    destroy_process_group_at_exit()  # a second callback in the same process registers nothing more
"""


def _initialised_at_exit(setting: str, store: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _EXIT, setting, str(store)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")
def test_the_group_is_destroyed_at_exit_only_with_the_hook(tmp_path: Path) -> None:
    assert _initialised_at_exit("none", tmp_path / "plain") == "initialised at exit: True"
    assert _initialised_at_exit("hook", tmp_path / "hooked") == "initialised at exit: False"
