"""Access control (issue 11, defect 8): API keys, job ownership, rate limits and job quotas, over real
HTTP, in the embedded mode (an in-process uvicorn) and across API processes sharing Redis."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.access import KeyRing, parse_entry
from benchmarks.harness import ROOT
from tests.conftest import Service, start_api
from tests.helpers import assert_problem, make_image, wait_job
from tests.test_service_store import serve_in_thread
from workers.settings import Settings

ALICE, BOB = "bbcu_alice-test-key", "bbcu_bob-test-key"
PAGE = "https://page.example"


def entry(key: str, name: str | None = None) -> str:
    line = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return f"{name}={line}" if name else line


def keyed(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(c: httpx.Client, headers: dict[str, str], **params: object) -> httpx.Response:
    return c.post("/restore", params={"task": "denoise", "async": "true", **params}, headers=headers,
                  files={"image": ("x.png", make_image(16, 16), "image/png")})


@pytest.fixture(scope="module")
def keyed_url(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An embedded-mode service with two keys: alice's from BBCU_API_KEYS, bob's from a keys file."""
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# the team's keys\n\n{entry(BOB)} bob\n")
    settings = Settings(weights_dir=tiny_weights, torch_threads=1, api_keys=entry(ALICE, "alice"),
                        api_keys_file=keys_file, cors_origins=PAGE)
    with serve_in_thread(settings) as url:
        yield url


def test_requests_without_a_valid_key_get_401(keyed_url: str) -> None:
    with httpx.Client(base_url=keyed_url, timeout=60) as c:
        missing = submit(c, {})
        wrong = submit(c, keyed("bbcu_guessed"))
        basic = c.get("/jobs/" + "0" * 32, headers={"Authorization": "Basic YTpi"})
        metrics = c.get("/metrics")
    detail = assert_problem(missing, 401)["detail"]
    # it names where each kind of client puts the key: the page's field, the CLI's option and variable
    for where in ("Authorization: Bearer", "the page's API key field", "--api-key", "BBCU_API_KEY"):
        assert where in detail, where
    assert missing.headers["www-authenticate"] == 'Bearer realm="bbcu"'
    wrong_detail = assert_problem(wrong, 401)["detail"]
    assert "not valid" in wrong_detail and "--api-key" in wrong_detail
    assert wrong.headers["www-authenticate"] == 'Bearer realm="bbcu", error="invalid_token"'
    assert_problem(basic, 401)
    assert assert_problem(metrics, 403)["type"] == "urn:bbcu:problem:operator-only"  # no BBCU_METRICS_KEY


def test_open_paths_need_no_key(keyed_url: str) -> None:
    with httpx.Client(base_url=keyed_url, timeout=60) as c:
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/docs", "/openapi.json", "/models",
                     "/limits"):
            assert c.get(path).status_code == 200, path
        assert c.get("/metrics", headers={"X-API-Key": BOB}).status_code == 403  # for the operator only


def test_a_page_on_an_allowed_origin_can_send_a_key(keyed_url: str) -> None:
    with httpx.Client(base_url=keyed_url, timeout=60) as c:
        pre = c.options("/restore", headers={"Origin": PAGE, "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "x-api-key, prefer"})
        refused = c.get("/jobs/" + "0" * 32, headers={"Origin": PAGE})
        stranger = c.options("/restore", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "x-api-key"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == PAGE
    assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    # the 401 reaches the page's script (it shows the key field), no credentials mode involved
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == PAGE
    assert "access-control-allow-credentials" not in refused.headers
    assert stranger.status_code == 400 and "access-control-allow-origin" not in stranger.headers


def test_jobs_belong_to_the_key_that_made_them(keyed_url: str) -> None:
    with httpx.Client(base_url=keyed_url, timeout=60, headers=keyed(ALICE)) as alice, \
            httpx.Client(base_url=keyed_url, timeout=60, headers={"X-API-Key": BOB}) as bob:
        made = submit(alice, {})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        assert "owner" not in made.json()["spec"]  # the owner id is not shown, even to its owner
        assert wait_job(alice, job_id)["status"] == "succeeded"
        unknown = assert_problem(bob.get("/jobs/" + "0" * 32), 404)
        for method, path in (("GET", ""), ("GET", "/result"), ("GET", "/events"), ("DELETE", "")):
            body = assert_problem(bob.request(method, f"/jobs/{job_id}{path}"), 404)
            # the same answer as an id that never existed
            assert (body["title"], body["type"], set(body)) == (unknown["title"], unknown["type"],
                                                                set(unknown)), (method, path)
        result = alice.get(f"/jobs/{job_id}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        with alice.stream("GET", f"/jobs/{job_id}/events") as events:
            assert events.status_code == 200
            assert "event: completed" in events.read().decode()
        # bob cannot cancel alice's running job; alice can
        big = alice.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                         files={"image": ("b.png", make_image(256, 256), "image/png")})
        big_id = big.json()["id"]
        assert_problem(bob.delete(f"/jobs/{big_id}"), 404)
        assert alice.get(f"/jobs/{big_id}").json()["status"] in ("queued", "running")
        assert alice.delete(f"/jobs/{big_id}").json()["status"] == "cancelled"


def test_openapi_documents_keys_and_404() -> None:
    from app.main import create_app

    spec = create_app(Settings(api_keys=entry(ALICE, "alice"))).openapi()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    for path, method in (("/jobs/{job_id}", "get"), ("/jobs/{job_id}", "delete"),
                         ("/jobs/{job_id}/result", "get"), ("/jobs/{job_id}/events", "get")):
        responses = spec["paths"][path][method]["responses"]
        assert {"401", "404", "429"} <= set(responses), (path, method)
    assert "Retry-After" in spec["paths"]["/restore"]["post"]["responses"]["429"]["headers"]
    assert "owner" not in spec["components"]["schemas"]["PublicSpec"]["properties"]


def test_key_entries_and_the_key_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cli.main", "key", "new", "--name", "ci"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    key = re.search(r"client, not kept anywhere\): (\S+)", out).group(1)  # type: ignore[union-attr]
    env_entry = re.search(r"BBCU_API_KEYS entry: (\S+)", out).group(1)  # type: ignore[union-attr]
    file_line = re.search(r"BBCU_API_KEYS_FILE line: (.+)", out).group(1)  # type: ignore[union-attr]
    assert key.startswith("bbcu_") and len(key) > 40 and key not in out.split("entry:")[1]
    ring = KeyRing.from_settings(Settings(api_keys=env_entry))
    assert ring.owner_of(key) == "ci" and ring.owner_of(key + "x") is None
    keys_file = tmp_path / "keys"
    keys_file.write_text(file_line + "\n")
    assert KeyRing.from_settings(Settings(api_keys_file=keys_file)).owner_of(key) == "ci"
    digest = hashlib.sha256(b"k").hexdigest()
    assert parse_entry(digest.upper(), "x") == (digest, f"key-{digest[:12]}")
    for bad in ("sha256:abc", "alice=md5:" + digest, "a b=sha256:" + digest):
        with pytest.raises(ValueError, match="x:"):
            parse_entry(bad, "x")
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no key digest"):
        KeyRing.from_settings(Settings(api_keys_file=tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot read"):
        KeyRing.from_settings(Settings(api_keys_file=tmp_path / "missing"))
    assert not KeyRing.from_settings(Settings()).enabled


def test_rate_limit_per_key_429_with_computed_retry_after(tiny_weights: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, torch_threads=1, api_keys=f"{entry(ALICE)},{entry(BOB)}",
                        rate_limit_per_min=6, rate_limit_burst=3)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        spent = [c.get("/jobs/" + "0" * 32, headers=keyed(ALICE)).status_code for _ in range(3)]
        assert spent == [404] * 3
        over = c.get("/jobs/" + "0" * 32, headers=keyed(ALICE))
        body = assert_problem(over, 429)
        # 6 a minute: the next token is about 10 s away (less the few ms the requests took)
        assert over.headers["retry-after"] == "10" and body["retry_after_s"] == 10
        assert "6 requests per minute" in body["detail"]
        assert c.get("/jobs/" + "0" * 32, headers=keyed(BOB)).status_code == 404  # each key its own bucket
        assert c.get("/healthz").status_code == 200  # open paths are not counted


def test_active_job_quota_per_key(tiny_weights: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, torch_threads=1, api_keys=f"{entry(ALICE)},{entry(BOB)}",
                        max_active_jobs=2, rate_limit_per_min=0)
    big = make_image(512, 512, seed=4)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:

        def long_job(key: str) -> httpx.Response:
            return c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                          headers=keyed(key), files={"image": ("b.png", big, "image/png")})

        ids = [long_job(ALICE).json()["id"] for _ in range(2)]
        full = long_job(ALICE)
        body = assert_problem(full, 429)
        assert body["max_active_jobs"] == 2 and "already has 2 queued or running jobs" in body["detail"]
        assert int(full.headers["retry-after"]) >= 1
        other = long_job(BOB)  # bob's quota is his own
        assert other.status_code == 202
        assert c.delete(f"/jobs/{ids[0]}", headers=keyed(ALICE)).json()["status"] == "cancelled"
        again = long_job(ALICE)  # a cancelled job no longer counts
        assert again.status_code == 202, again.text
        for job_id, key in ((ids[1], ALICE), (again.json()["id"], ALICE), (other.json()["id"], BOB)):
            assert c.delete(f"/jobs/{job_id}", headers=keyed(key)).status_code == 200


def test_limits_are_off_for_an_open_service_unless_asked(tiny_weights: Path) -> None:
    open_settings = Settings(weights_dir=tiny_weights, rate_limit_per_min=6, rate_limit_burst=1)
    by_address = open_settings.model_copy(update={"anonymous_limits": True})
    for settings, want in ((open_settings, [404, 404, 404]), (by_address, [404, 429, 429])):
        with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
            assert [c.get("/jobs/" + "0" * 32).status_code for _ in range(3)] == want


def test_ownership_and_limits_across_api_processes(celery_service: Service, logdir: Path) -> None:
    """Two API processes on one Redis: a job made through one is its owner's through the other, and
    the rate and job limits of a key are counted once for both."""
    carol, dave = "bbcu_carol-test-key", "bbcu_dave-test-key"
    env = {**celery_service.env, "BBCU_API_KEYS": ",".join(entry(k) for k in (ALICE, BOB, carol, dave)),
           "BBCU_RATE_LIMIT_PER_MIN": "6", "BBCU_RATE_LIMIT_BURST": "4", "BBCU_MAX_ACTIVE_JOBS": "1"}
    (url1, api1), (url2, api2) = (start_api(f"api-keyed-{n}", env, logdir) for n in (1, 2))
    try:
        with httpx.Client(base_url=url1, timeout=60) as one, httpx.Client(base_url=url2, timeout=60) as two:
            made = submit(one, keyed(ALICE))
            assert made.status_code == 202, made.text
            job_id = made.json()["id"]
            with two.stream("GET", f"/jobs/{job_id}/events", headers=keyed(ALICE)) as events:
                assert events.status_code == 200 and "event: completed" in events.read().decode()
            assert two.get(f"/jobs/{job_id}", headers=keyed(ALICE)).json()["status"] == "succeeded"
            assert_problem(two.get(f"/jobs/{job_id}", headers=keyed(BOB)), 404)

            spent = [(one, two)[i % 2].get("/jobs/" + "0" * 32, headers=keyed(carol)).status_code
                     for i in range(4)]
            assert spent == [404] * 4
            over = one.get("/jobs/" + "0" * 32, headers=keyed(carol))
            assert_problem(over, 429)
            assert over.headers["retry-after"] == "10"  # one bucket in Redis, not one per process

            big = make_image(512, 512, seed=9)
            first = one.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                             headers=keyed(dave), files={"image": ("b.png", big, "image/png")})
            assert first.status_code == 202, first.text
            second = submit(two, keyed(dave))
            assert "the limit is 1" in assert_problem(second, 429)["detail"]
            assert two.delete(f"/jobs/{first.json()['id']}", headers=keyed(dave)).status_code == 200
    finally:
        api1.stop()
        api2.stop()


def test_client_and_cli_send_the_key_and_wait_out_the_quota(tiny_weights: Path, tmp_path: Path) -> None:
    """bbcu_client over real HTTP: no key is a 401 ServiceError; with one, a batch wider than the key's
    job quota still finishes (each 429 is retried after its Retry-After); `bbcu restore --url` reads
    $BBCU_API_KEY."""
    from bbcu_client import Client, Restored, ServiceError

    settings = Settings(weights_dir=tiny_weights, torch_threads=1, api_keys=entry(ALICE),
                        max_active_jobs=1, retry_after_s=1)
    images = [make_image(24, 24, seed=s) for s in range(3)]
    with serve_in_thread(settings) as url:
        with pytest.raises(ServiceError) as refused:
            Client(url).restore(images[0], task="denoise")
        assert refused.value.status == 401
        done = Client(url, api_key=ALICE).restore_many(images, task="denoise", concurrency=3)
        assert [isinstance(r, Restored) and r.job["status"] for r in done] == ["succeeded"] * 3
        src, out = tmp_path / "in.png", tmp_path / "out.png"
        src.write_bytes(images[0])
        env = {k: v for k, v in os.environ.items() if not k.startswith("BBCU_")}
        cli = subprocess.run([sys.executable, "-m", "cli.main", "restore", str(src), "-o", str(out),
                              "--task", "denoise", "--url", url, "--quiet"], cwd=ROOT, capture_output=True,
                             text=True, env={**env, "BBCU_API_KEY": ALICE}, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        anonymous = subprocess.run([sys.executable, "-m", "cli.main", "restore", str(src), "-o",
                                    str(tmp_path / "no.png"), "--task", "denoise", "--url", url, "--quiet"],
                                   cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
        assert anonymous.returncode == 1, anonymous.stderr
        assert "Unauthorized: this service requires an API key" in anonymous.stderr
        assert "--api-key KEY to bbcu restore --url (or set BBCU_API_KEY)" in anonymous.stderr
