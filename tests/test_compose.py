"""The Docker Compose deployment: the files agree with the code, and the stack built and run for real."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from benchmarks.harness import ROOT
from cli.main import build_parser
from workers.contract import QUEUES
from workers.settings import Settings

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """The instructions of each named stage of docker/Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        m = re.match(r"FROM \S+ AS (\S+)", line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif line and not line.startswith("#"):
            current.append(line)
    return out


def chain(name: str, all_stages: dict[str, list[str]]) -> list[str]:
    """A stage's instructions and those of the stages it copies from."""
    lines = list(all_stages[name])
    for line in all_stages[name]:
        m = re.match(r"COPY --from=(\S+)", line)
        if m:
            lines += chain(m.group(1), all_stages)
    return lines


def make_variable(name: str) -> str:
    m = re.search(rf"^{name} \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, name
    return m.group(1)


def test_compose_file_matches_the_images_commands_and_settings() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"redis", "api", "worker-cpu", "worker-gpu"}
    redis = services["redis"]
    assert "ports" not in redis and "redis-cli" in redis["healthcheck"]["test"]
    assert redis["user"] == "redis" and redis["image"] == "${REDIS_IMAGE:-redis:7-alpine}"
    assert services["api"]["ports"] == ["${BBCU_PORT:-8000}:8000"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    fields = set(Settings.model_fields)
    all_stages = stages()
    parser = build_parser()
    declared = set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), re.M))
    for name in ("api", "worker-cpu", "worker-gpu"):
        svc = services[name]
        build = svc["build"]
        assert build["dockerfile"] == "docker/Dockerfile" and build["target"] == name
        assert set(build["args"]) <= declared
        # the same CLI the tests run, and only settings the settings class knows
        parser.parse_args(svc["command"])
        assert [k for k in svc["environment"] if k.removeprefix("BBCU_").lower() not in fields] == []
        assert svc["environment"]["BBCU_WEIGHTS_DIR"] == "/weights"
        assert svc["volumes"] == ["${BBCU_WEIGHTS_HOST_DIR:-./models/weights}:/weights:ro"]
        stage = all_stages[name]
        assert "USER bbcu" in stage and 'ENTRYPOINT ["bbcu"]' in stage
        [health] = [ln for ln in stage if ln.startswith("HEALTHCHECK")]
        if name == "api":
            assert "/readyz" in health
        else:
            assert health.endswith('CMD ["bbcu", "worker-alive"]')
            parser.parse_args(["worker-alive"])
            queue = svc["command"][svc["command"].index("--queues") + 1]
            assert queue in QUEUES and f'"--queues", "{queue}"' in stage[-1]
    assert not [ln for ln in chain("api", all_stages) if ln.startswith("RUN") and "torch" in ln]
    # one torch version: the Makefile's pin is the images' default, CPU and GPU
    torch = make_variable("TORCH_VERSION")
    assert re.findall(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M) == [torch, torch]


def test_docker_context_holds_what_the_images_copy() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            copied |= {p.rstrip("/") for p in line.split()[1:-1]}
    assert copied <= allowed and all((ROOT / p).exists() for p in copied)


def daemon() -> str | None:
    """None when a Docker daemon answers (docker/ensure-daemon.sh starts one as root); else why not."""
    done = subprocess.run(["bash", str(ROOT / "docker" / "ensure-daemon.sh")], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or "no Docker daemon")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_compose_stack_built_and_run_for_real() -> None:
    """make compose-test: images, /readyz, every task against the engine, a killed worker, no root."""
    reason = daemon()
    if reason:
        pytest.skip(f"no Docker daemon can start here: {reason}")
    done = subprocess.run(["make", "-s", "compose-test"], cwd=ROOT, capture_output=True, text=True,
                          timeout=3500)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    for line in ("sr: 96x96", "denoise: 96x96", "deblock: 96x96", "job finished on", "all checks passed"):
        assert f"[compose-test] {line}" in out, out[-6000:]
    assert "redis-1: uids" in out or "redis_1: uids" in out
