"""The request path resolves the networks once (issue 24 item 3): the API looks the pipeline up in the
catalogue, costs it and puts the names and weights checksums in the job; the worker runs exactly those
(never a lookup of its own), and refuses weights that changed after the job was accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.submission import check_models
from models import catalog
from models.hashing import sha256_file
from tests.conftest import Service
from tests.helpers import make_image, pixels
from workers.contract import ImageFacts, JobSpec, JobStatus, StageSpec, new_job_id
from workers.memory_store import MemoryStore
from workers.settings import Settings


def test_the_api_resolves_names_checksums_and_cost_once(tiny_weights: Path) -> None:
    found = check_models(tiny_weights, ("deblock", "sr"), 2, None)
    assert [(s.task, s.scale, s.model, s.chroma_model) for s in found.stages] == [
        ("deblock", 1, "tiny_deblock_l", None), ("sr", 2, "tiny_sr_x2_l", None)]
    assert [s.sha256 for s in found.stages] == [sha256_file(tiny_weights / "tiny_deblock_l.safetensors"),
                                                sha256_file(tiny_weights / "tiny_sr_x2_l.safetensors")]
    # the pipeline costs what its stages cost alone
    alone = [check_models(tiny_weights, (t,), 2 if t == "sr" else None, None) for t in ("deblock", "sr")]
    assert found.ops_per_pixel == sum(a.ops_per_pixel for a in alone) > 0
    assert (found.scale, found.variant) == (2, None)
    assert check_models(tiny_weights, ("sr",), None, None).variant == "l"  # one network: its variant


def _run(weights: Path, spec: JobSpec, data: bytes):  # type: ignore[no-untyped-def]
    from workers.jobs import JobRunner

    store = MemoryStore(60, 60)
    store.create(spec, ImageFacts(width=24, height=20, bytes=len(data), format="png"), data)
    rec = JobRunner(Settings(weights_dir=weights, torch_threads=1), store).run(spec.id)
    assert rec is not None
    return rec, store.result(spec.id)


def test_the_worker_runs_the_spec_networks_not_its_own_lookup(tiny_weights: Path) -> None:
    """A spec whose task alone would resolve to the x4 network runs the x2 one its stages name."""
    data = make_image(24, 20, seed=8)
    x2 = StageSpec.of(catalog.by_name("tiny_sr_x2_l", tiny_weights), None)
    rec, out = _run(tiny_weights, JobSpec(id=new_job_id(), task="sr", scale=4, stages=[x2]), data)
    assert rec.status == JobStatus.succeeded, rec.error
    assert [s.model for s in rec.stages] == ["tiny_sr_x2_l"] and pixels(out).shape == (40, 48, 3)
    assert rec.model is not None and rec.model["sha256"] == x2.sha256


def test_weights_changed_after_acceptance_fail_the_job(tiny_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    accepted = check_models(weights, ("denoise",), None, None)
    # the operator replaces the file between the API's lookup and the worker's load
    shutil.copy(weights / "tiny_deblock_l.safetensors", weights / "tiny_denoise_l.safetensors")
    rec, out = _run(weights, JobSpec(id=new_job_id(), task="denoise", stages=accepted.stages),
                    make_image(24, 20))
    assert rec.status == JobStatus.failed and rec.error is not None and out is None
    assert rec.error.code.value == "unknown_model"
    assert "changed after the job was accepted" in rec.error.detail


def test_over_http_the_job_runs_what_the_api_resolved(embedded_service: Service, tiny_weights: Path) -> None:
    with embedded_service.client() as c:
        r = c.post("/restore", params={"task": "deblock,sr", "scale": 2},
                   files={"image": ("x.png", make_image(24, 20, seed=9), "image/png")})
        assert r.status_code == 200, r.text
        job = c.get(f"/jobs/{r.headers['x-job-id']}").json()
    resolved = check_models(tiny_weights, ("deblock", "sr"), 2, None).stages
    assert [s["model"] for s in job["stages"]] == [s.model for s in resolved]
    assert job["model"]["sha256"] == resolved[-1].sha256 and "stages" not in job["spec"]
