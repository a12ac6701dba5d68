"""The torch-free operation counts (models/cost.py) against the traced ones (models/complexity.py)."""

from __future__ import annotations

import pytest

from models.complexity import count
from models.config import NetworkConfig, deblock_config, denoise_config, sr_config
from models.cost import per_pixel

CONFIGS = [
    *(sr_config(s, v) for s in (2, 3, 4) for v in ("l", "m", "head+body+up+tail", "body+tail")),
    sr_config(4, "l", nf=8, depth=2),
    denoise_config(), denoise_config(nf=8, depth=4),
    deblock_config(), deblock_config(channels=3),
    NetworkConfig(task="denoise", binary=frozenset({"head", "body", "tail"})),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.task}-x{c.scale}-{c.variant}-nf{c.nf}")
def test_per_pixel_counts_match_the_traced_network(config: NetworkConfig) -> None:
    h, w = 24, 40
    traced = count(config, h, w)
    cost = per_pixel(config)
    assert (cost.flops * h * w, cost.bops * h * w) == (traced.flops, traced.bops)
    assert cost.ops * h * w == pytest.approx(traced.ops_paper)


def test_the_paper_figure() -> None:
    """BBCU-L x4 on a 320x180 input: 79.2 G OPs in the paper."""
    assert per_pixel(sr_config(4, "l")).ops * 320 * 180 / 1e9 == pytest.approx(79.2, abs=0.05)
