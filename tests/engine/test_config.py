"""``RenderConfig``: plain settings for checkpoints."""

from __future__ import annotations

import torch

from featvis.engine import Flip, RenderConfig


def test_plain_settings_round_trip_and_leave_out_objects() -> None:
    config = RenderConfig(steps=7, image_size=(24, 32), diversity_layer="net.conv", autocast="none", seed=3)
    plain = config.plain()
    assert RenderConfig().replace(**plain) == config
    assert plain["image_size"] == (24, 32) and plain["diversity_layer"] == "net.conv" and plain["steps"] == 7
    # Transform lists and optimiser factories are objects a checkpoint should not pickle: left out.
    custom = config.replace(augment=[Flip()], optimizer=lambda params, lr: torch.optim.SGD(params, lr))
    assert "augment" not in custom.plain() and "optimizer" not in custom.plain()
    assert custom.plain() == {k: v for k, v in plain.items() if k not in ("augment", "optimizer")}
