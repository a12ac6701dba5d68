"""The OpenAPI document is a contract (issue 25): read from a live service, it gives every answer a
schema, every error the ProblemDetails schema, the 202 its job, headers and links, each closed option
its values, and security only where keys are on; a bounded schemathesis run (all checks and phases)
finds nothing against a keyless and a keyed service."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.harness import ROOT
from models.vocab import MEDIA_TYPES
from tests.conftest import Service
from tests.helpers import assert_problem, make_image
from tests.test_auth import ALICE, entry, keyed
from tests.test_service_store import serve_in_thread
from workers.settings import Settings

PROBLEM = {"$ref": "#/components/schemas/ProblemDetails"}
ST_CONFIG = ROOT / "tests" / "schemathesis.toml"


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_every_answer_of_the_live_schema_has_a_schema(embedded_service: Service) -> None:
    with embedded_service.client() as c:
        doc = c.get("/openapi.json").json()
    missing = [(path, method, status, ct) for path, method, op in operations(doc)
               for status, response in op["responses"].items()
               for ct, media in (response.get("content") or {"(none)": {}}).items() if "schema" not in media]
    assert missing == []
    schemas = doc["components"]["schemas"]
    assert all(r.removeprefix("#/components/schemas/") in schemas for r in refs(doc))
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if status[0] in "45":
                assert response["content"] == {"application/problem+json": {
                    **response["content"]["application/problem+json"], "schema": PROBLEM}}, (path, status)
        # keys are off: nothing asks for one, and nothing answers 401 or (no limits) 429
        assert "security" not in op and not {"401", "429"} & set(op["responses"]), (path, method)
    assert "securitySchemes" not in doc["components"]
    assert set(schemas["ProblemDetails"]["properties"]) >= {
        "type", "title", "status", "detail", "instance", "job_id", "errors", "retry_after_s", "max_pixels"}


def test_declared_statuses_and_closed_options(embedded_service: Service) -> None:
    with embedded_service.client() as c:
        doc = c.get("/openapi.json").json()
    statuses = {(path, method): sorted(op["responses"]) for path, method, op in operations(doc)}
    assert statuses[("/restore", "post")] == ["200", "202", "400", "408", "409", "410", "413", "415", "422",
                                              "500", "503", "504"]
    assert statuses[("/jobs/{job_id}/result", "get")] == ["200", "404", "409", "410", "503"]
    assert statuses[("/jobs/{job_id}", "delete")] == ["200", "404", "409", "503"]
    assert statuses[("/readyz", "get")] == ["200", "503"]
    restore = doc["paths"]["/restore"]["post"]
    image = {"type": "string", "format": "binary"}
    assert restore["responses"]["200"]["content"] == {ct: {"schema": image} for ct in MEDIA_TYPES.values()}
    assert doc["paths"]["/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]["image/webp"] == {
        "schema": image}
    accepted = restore["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobView"}
    assert {"Location", "Retry-After", "X-Job-Id"} <= set(accepted["headers"])
    assert {name: link["operationId"] for name, link in accepted["links"].items()} == {
        "job": "get_job", "result": "get_result", "events": "job_events", "cancel": "cancel_job"}
    ids = {op["operationId"] for _, _, op in operations(doc)}
    assert all(link["operationId"] in ids for link in accepted["links"].values())
    params = {p["name"]: p["schema"] for p in restore["parameters"]}
    assert "deblock,sr" in params["task"]["enum"] and "sr,deblock" not in params["task"]["enum"]
    assert params["scale"]["enum"] == [2, 3, 4] and params["variant"]["enum"] == ["l", "m"]
    assert params["strength"]["anyOf"] == [{"type": "number", "minimum": 0, "maximum": 1},
                                           {"type": "string", "enum": ["auto"]}]
    events = "(start|progress|completed)"
    assert params["callback_events"]["pattern"] == f"^{events}(,{events})*$"
    body = restore["requestBody"]["content"]
    assert body["image/*"]["schema"]["minLength"] == 1
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["minLength"] == 1
    for path, model in (("/models", "ModelList"), ("/limits", "Limits")):
        schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}


def test_the_server_refuses_what_the_schema_refuses(embedded_service: Service) -> None:
    """Values outside the schema's enums and ranges are a 422 naming the parameter."""
    image = {"image": ("x.png", make_image(8, 8), "image/png")}
    with embedded_service.client() as c:
        for params, where in (({"task": "denoise", "strength": ""}, "strength"),
                              ({"task": "sr", "scale": 5}, "scale"),
                              ({"task": "SR"}, "task"), ({"task": "sr,deblock"}, "task"),
                              ({"task": "denoise", "variant": "x"}, "variant"),
                              ({"task": "denoise", "strength": "AUTO"}, "strength")):
            body = assert_problem(c.post("/restore", params=params, files=image), 422)
            assert [e["loc"] for e in body["errors"]] == [["query", where]], params
        hook = {"task": "denoise", "callback_url": "http://127.0.0.1:9/hook"}
        for events in ("start,", "start, completed", ""):  # what the schema's pattern refuses
            r = c.post("/restore", params={**hook, "callback_events": events}, files=image)
            assert assert_problem(r, 422)["type"] == "urn:bbcu:problem:invalid-callback", events
        assert "sr must come last" in c.post("/restore", params={"task": "sr,deblock"}, files=image).text
        ok = c.post("/restore", params={"task": "denoise", "strength": "0.5"}, files=image)
        assert ok.status_code == 200 and ok.headers["x-strength"] == "0.500"


def test_keyed_schema_declares_security_401_and_429(tiny_weights: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, api_keys=entry(ALICE, "alice"))
    with serve_in_thread(settings) as url:
        doc = httpx.get(url + "/openapi.json", timeout=30).json()
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    for path in ("/restore", "/jobs/{job_id}", "/jobs/{job_id}/result", "/jobs/{job_id}/events"):
        op = next(iter(doc["paths"][path].values()))
        assert op["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}], path
        assert {"401", "429"} <= set(op["responses"]), path
        assert op["responses"]["401"]["content"]["application/problem+json"]["schema"] == PROBLEM
    assert "security" not in doc["paths"]["/models"]["get"]
    # /metrics is the operator's: with keys on and no operator key nobody may read it (403), no key opens it
    metrics = doc["paths"]["/metrics"]["get"]
    assert "security" not in metrics and sorted(metrics["responses"]) == ["200", "403"]


def test_operator_key_alone_guards_metrics_only() -> None:
    from app.main import create_app

    doc = create_app(Settings(metrics_key=entry("bbcu_operator-test-key"))).openapi()
    metrics = doc["paths"]["/metrics"]["get"]
    assert metrics["security"] and sorted(metrics["responses"]) == ["200", "401"]
    assert all("security" not in op and "401" not in op["responses"]
               for path, _, op in operations(doc) if path != "/metrics")


def schemathesis(url: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """All checks, all phases, a fixed seed and a few examples per operation."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.fail("schemathesis is a dev dependency: make install")
    return subprocess.run([st, "--config-file", str(ST_CONFIG), "run", f"{url}/openapi.json",
                           "--checks", "all", "--seed", "25", "--max-examples", "5", "--workers", "1",
                           "--request-timeout", "60", "--no-color", *extra],
                          capture_output=True, text=True, timeout=600, cwd=cwd)  # its cache goes there


def test_schemathesis_finds_nothing_keyless_and_keyed(tiny_weights: Path, tmp_path: Path) -> None:
    keyless = Settings(weights_dir=tiny_weights, torch_threads=1)
    # a rate the fuzzer stays under: its requests reach the routes' logic, not only the 429
    keys_on = keyless.model_copy(update={"api_keys": entry(ALICE, "alice"), "rate_limit_per_min": 1e6,
                                         "rate_limit_burst": 100_000})
    auth = ("--header", f"Authorization: {keyed(ALICE)['Authorization']}")
    for settings, extra in ((keyless, ()), (keys_on, auth)):
        with serve_in_thread(settings) as url:
            run = schemathesis(url, tmp_path, *extra)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert re.search(r"(\d+) generated, \1 passed(, \d+ skipped)?\n", run.stdout), run.stdout[-6000:]
        assert "Failures:" not in run.stdout and "Errors:" not in run.stdout, run.stdout[-6000:]
        for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
            assert f"✅ {phase}" in run.stdout, run.stdout[-6000:]
