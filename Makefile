# Everything from a fresh clone: `make run` (the service on 127.0.0.1:8000; HOST=, PORT= to change) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test test-quick bench soak lint redis browser docker compose-test clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the pinned torch first: on this machine a local CPU build; an unpinned torch would pull CUDA
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[engine,dev]'
	touch $(STAMP)

redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }

# Debian's headless Chromium and its driver for the page's browser tests; where they cannot be
# installed those tests are skipped (and say why), the rest of the suite still runs
browser:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; } || \
	  echo "warning: chromium/chromium-driver not installed: the browser tests will be skipped"

# on this machine only by default: HOST=0.0.0.0 to serve the network (set BBCU_API_KEYS first)
HOST ?= 127.0.0.1
PORT ?= 8000
run: install
	$(BIN)/bbcu serve --host $(HOST) --port $(PORT)

# Docker for the Compose test: installs docker.io, docker-compose and debootstrap where missing and
# starts dockerd (root); where that cannot be done the test says why and is skipped
docker:
	@bash docker/ensure-daemon.sh

# the whole stack in Docker, built and run for real (docker/compose_test.py says what it checks)
compose-test: install docker
	TORCH_VERSION=$(TORCH_VERSION) PYTHONPATH=$(CURDIR) $(BIN)/python docker/compose_test.py

test: install redis browser
	@bash docker/ensure-daemon.sh || echo "no Docker daemon: the Compose test will be skipped"
	$(BIN)/python -m pytest -q

# the unit tests only (no processes, servers or Redis; conftest marks those `service`): a minute or two
test-quick: install
	$(BIN)/python -m pytest -q -m "not service and not slow"

# `make bench` runs every section of benchmarks/run.py; `make bench peers` (or kernels, service, gpu,
# tiles: any of them) only those named after it, which are then arguments, not targets of their own
# THP_MEM_ALLOC_ENABLE as `bbcu` sets it for the service's processes (cli/main.py)
bench: install redis
	THP_MEM_ALLOC_ENABLE=1 $(BIN)/python -m benchmarks.run $(BENCH_SECTIONS)

ifeq ($(firstword $(MAKECMDGOALS)),bench)
BENCH_SECTIONS := $(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS))
.PHONY: $(BENCH_SECTIONS)
$(BENCH_SECTIONS):
	@:
endif

# the load and fault campaign of issue 11 against real processes (benchmarks/load.py says what it
# does); prints accepted / refused / succeeded / failed / lost per scenario and fails if a target is
# missed. `make soak SOAK_ARGS=--quick` is the CI-sized one; SOAK_ARGS may also name scenarios
soak: install redis
	$(BIN)/python -m benchmarks.load $(SOAK_ARGS)

# ruff, mypy, and the import boundaries of pyproject.toml's [tool.importlinter] contracts
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
