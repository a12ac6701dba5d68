"""Helpers shared by the service tests: test images, the engine's reference output, HTTP checks."""

from __future__ import annotations

import hashlib
import io
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image


def missing(reason: str) -> NoReturn:
    """A prerequisite (redis-server, the built C extension) is missing: skip here, fail in CI (CI=true),
    where a broken build or install must not pass as a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the run)", pytrace=False)
    pytest.skip(reason)


def make_image(w: int, h: int, seed: int = 0, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 3)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int16)


@lru_cache(maxsize=8)
def load_model(weights: Path, task: str, scale: int | None):  # type: ignore[no-untyped-def]
    """The engine's model for a task from a weights directory (cached)."""
    from models.engine import load_for_task

    return load_for_task(task, scale, weights_dir=weights)


def reference(weights: Path, task: str, scale: int | None, data: bytes, fmt: str = "png") -> np.ndarray:
    """The engine alone on the same image and weights."""
    from models import imageio, pipeline

    out = pipeline.restore_image(load_model(weights, task, scale), imageio.decode(data, max_pixels=1 << 30))
    return pixels(imageio.encode(out, fmt))


def assert_same_image(got: bytes, want: np.ndarray) -> None:
    a = pixels(got)
    assert a.shape == want.shape
    diff = np.abs(a - want)
    assert diff.max() <= 1 and diff.mean() < 0.01, f"max {diff.max()} mean {diff.mean()}"


def assert_problem(r, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("urn:")
    return body  # type: ignore[no-any-return]


def wait_job(c, job_id: str, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(f"/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {body['status']}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
