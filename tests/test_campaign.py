"""The GPU campaign's plans (scripts/gpu_campaign.py): which weights each run starts from, and when."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_campaign", ROOT / "scripts" / "gpu_campaign.py")
assert _spec is not None and _spec.loader is not None
campaign = importlib.util.module_from_spec(_spec)
sys.modules["gpu_campaign"] = campaign  # dataclasses look their module up while the file runs
_spec.loader.exec_module(campaign)
SHIPPED = ROOT / "models" / "weights"


def test_first_campaign_grows_x3_x4_from_this_campaigns_x2() -> None:
    runs = {r.name: r for r in campaign.plan(7.0, 3.0, SHIPPED)}
    assert len(runs) == 9
    assert runs["sr-x4-m"].init == "@sr-x2-m" and runs["sr-x4-m"].start == 3.0
    assert runs["sr-x2-l"].init == str(SHIPPED / "bbcu-sr-x2.safetensors") and runs["sr-x2-l"].start == 0


def test_continue_starts_every_run_from_its_own_shipped_file() -> None:
    runs = campaign.plan_continue(6.0, SHIPPED, [], 2e-4, 5e-5)
    assert {r.name for r in runs} == set(campaign.SHIPPED_FILES)
    for r in runs:
        assert r.init is not None and Path(r.init).is_file(), r.name  # every shipped file exists
        assert (r.start, r.end, r.lr, r.final_lr) == (0, 6.0, 2e-4, 5e-5)
    only = campaign.plan_continue(6.0, SHIPPED, ["sr-x4-l", "deblock-color"], 1e-4, 1e-5)
    assert [(r.name, Path(r.init).name) for r in only] == [  # type: ignore[arg-type]
        ("deblock-color", "bbcu-deblock-color.safetensors"), ("sr-x4-l", "bbcu-sr-x4.safetensors")]
    assert "--channels" in only[0].args and "--scale" in only[1].args
    with pytest.raises(SystemExit, match="unknown run"):
        campaign.plan_continue(6.0, SHIPPED, ["sr-x5"], 1e-4, 1e-5)
