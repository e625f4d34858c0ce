"""The README's tensorboard command serves every epoch's image of a tag (TensorBoard keeps 10 per tag by default)."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from helpers import TinyClassifier, make_trainer

from featvis.callback import FeatureVisCallback
from featvis.engine import RenderConfig

README = Path(__file__).resolve().parents[1] / "README.md"
# The command the README should show; the README's own line is used when it has one.
DEFAULT_COMMAND = "tensorboard --logdir lightning_logs --samples_per_plugin images=1000"
EPOCHS = 12


def readme_command() -> list[str]:
    """The README's ``tensorboard --logdir ...`` command as arguments (the default one if the README has none)."""
    lines = README.read_text().splitlines() if README.is_file() else []
    commands = [line.strip() for line in lines if line.strip().startswith("tensorboard --logdir")]
    return shlex.split(commands[0] if commands else DEFAULT_COMMAND)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def serve(logdir: Path, flags: list[str]):
    port = free_port()
    args = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), *flags]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}"


def image_steps(base: str, run: str, tag: str, deadline: float) -> list[int]:
    """Steps of the images TensorBoard serves for ``run``/``tag``, once it has loaded them (bounded wait)."""
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    steps: list[int] = []
    while time.monotonic() < deadline:
        try:
            steps = [entry["step"] for entry in get_json(f"{base}/data/plugin/images/images?{query}")]
            if steps and max(steps) == EPOCHS:
                return steps
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    return steps


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_readme_tensorboard_command_shows_every_epoch(tmp_path):
    command = readme_command()
    assert command[:3] == ["tensorboard", "--logdir", command[2]]
    flags = command[3:]
    assert any("images=" in flag for flag in flags), (
        f"the command must raise the image sample limit: {command}"
    )

    callback = FeatureVisCallback(config=RenderConfig(steps=1, images_per_target=1, image_size=8))
    trainer = make_trainer(tmp_path / "logs", [callback], epochs=EPOCHS, enable_checkpointing=False)
    trainer.fit(TinyClassifier(samples=16))
    run = "run/version_0"

    process, base = serve(tmp_path / "logs", flags)
    try:
        steps = image_steps(base, run, "featvis/red", time.monotonic() + 90)
        assert steps == list(range(EPOCHS + 1))  # 0 (before training) .. 12: all 13, not 10
        all_steps = [
            e["step"] for e in get_json(f"{base}/data/plugin/images/images?run={run}&tag=featvis/all")
        ]
        assert all_steps == list(range(EPOCHS + 1))
        # The served image itself is a PNG.
        entry = get_json(f"{base}/data/plugin/images/images?run={run}&tag=featvis/red")[-1]
        with urllib.request.urlopen(
            f"{base}/data/plugin/images/individualImage?{entry['query']}", timeout=5
        ) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        stop(process)
    assert process.returncode is not None
