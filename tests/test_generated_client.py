"""A client generated from the live /openapi.json (openapi-python-client, issue 25) does the whole job on
its own: no generator warning, a synchronous and an asynchronous restore, polling, the download, and a
422 and a 429 parsed as ProblemDetails."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from models.vocab import MEDIA_TYPES
from tests.helpers import make_image, pixels
from tests.test_auth import ALICE, entry
from tests.test_service_store import serve_in_thread
from workers.settings import Settings

# image answers are read as bytes: mapping image/* to octet-stream is the generator's documented option
CONFIG = "content_type_overrides:\n" + "".join(
    f"  {ct}: application/octet-stream\n" for ct in [*MEDIA_TYPES.values(), "image/*"])


def generate(url: str, out: Path, package: str) -> ModuleType:
    """Generate the client package from the service's document and import it."""
    (out / "openapi.json").write_bytes(httpx.get(url + "/openapi.json", timeout=30).content)
    (out / "config.yml").write_text(CONFIG)
    bin_dir = Path(sys.executable).parent  # the generator formats its output with ruff from here
    run = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", "openapi.json",
                          "--config", "config.yml", "--meta", "none", "--output-path", package],
                         cwd=out, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(out))


def sub(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def test_generated_client_restores_polls_downloads_and_parses_problems(tiny_weights: Path,
                                                                       tmp_path: Path) -> None:
    pytest.importorskip("openapi_python_client")
    data = make_image(24, 20, seed=5)
    with serve_in_thread(Settings(weights_dir=tiny_weights, torch_threads=1)) as url:
        gen = generate(url, tmp_path, "bbcu_open")
        restore, get_job, get_result = (sub(gen, f"api.{m}") for m in ("restore.restore", "jobs.get_job",
                                                                       "jobs.get_result"))
        models, types = sub(gen, "models"), sub(gen, "types")
        client = gen.Client(base_url=url, timeout=httpx.Timeout(60.0))
        upload = types.File(payload=BytesIO(data), file_name="x.png", mime_type="image/png")
        # synchronous, the raw bytes (multipart works as well): the image itself
        sync = restore.sync_detailed(client=client, body=upload, task=models.RestoreTask.DENOISE)
        assert sync.status_code == 200 and isinstance(sync.parsed, types.File)
        image = sync.parsed.payload.read()
        assert pixels(image).shape == (20, 24, 3)
        # asynchronous (the generated asyncio call; httpx's async client streams a multipart body, not
        # a raw file object), then polled and downloaded with the job's id
        accepted = asyncio.run(restore.asyncio_detailed(
            client=gen.Client(base_url=url, timeout=httpx.Timeout(60.0)),
            body=models.RestoreFilesBody(image=types.File(payload=BytesIO(data), file_name="x.png")),
            task=models.RestoreTask.DENOISE, async_=True))
        assert accepted.status_code == 202 and isinstance(accepted.parsed, models.JobView)
        assert accepted.headers["location"] == f"/jobs/{accepted.parsed.id}"
        job = accepted.parsed
        deadline = time.monotonic() + 60
        while job.status != models.JobStatus.SUCCEEDED:
            assert job.status in (models.JobStatus.QUEUED, models.JobStatus.RUNNING)
            assert time.monotonic() < deadline
            time.sleep(0.1)
            job = get_job.sync(job.id, client=client)
            assert isinstance(job, models.JobView)
        result = get_result.sync(job.id, client=client)
        assert isinstance(result, types.File) and result.payload.read() == image
        # a 422, parsed: the invalid option is named
        bad = restore.sync_detailed(client=client, body=models.RestoreFilesBody(image=types.File(
            payload=BytesIO(data), file_name="x.png")), task=models.RestoreTask.DENOISE, strength=2.0)
        assert bad.status_code == 422 and isinstance(bad.parsed, models.ProblemDetails)
        assert bad.parsed.status == 422 and [e.loc for e in bad.parsed.errors] == [["query", "strength"]]

    # keys on: the generated client authenticates, and a 429 (two requests of burst, then one a minute)
    # arrives parsed, with the Retry-After its members repeat
    keyed = Settings(weights_dir=tiny_weights, api_keys=entry(ALICE, "alice"), rate_limit_per_min=1,
                     rate_limit_burst=2)
    with serve_in_thread(keyed) as url:
        (tmp_path / "keyed").mkdir()
        gen = generate(url, tmp_path / "keyed", "bbcu_keyed")
        get_job, models = sub(gen, "api.jobs.get_job"), sub(gen, "models")
        client = gen.AuthenticatedClient(base_url=url, token=ALICE)
        answers = [get_job.sync_detailed("0" * 32, client=client) for _ in range(3)]
        assert [a.status_code for a in answers] == [404, 404, 429]
        limited = answers[2].parsed
        assert isinstance(limited, models.ProblemDetails) and limited.status == 429
        assert limited.retry_after_s == int(answers[2].headers["retry-after"]) >= 1
        assert limited.limit_per_min == 1
