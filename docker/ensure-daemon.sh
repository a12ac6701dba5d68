#!/usr/bin/env bash
# Make `docker info` answer: as root, install what is missing (docker.io, docker-compose, debootstrap:
# the daemon, Compose and the base-image fallback) and start dockerd if none runs. It tries the default
# bridge network first, then a daemon without iptables and bridge (builds then use the host network).
# Exit 1 with the reason when no daemon can run here.
set -euo pipefail
log=${DOCKERD_LOG:-/var/log/bbcu-dockerd.log}
root() { [ "$(id -u)" = 0 ]; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ] && root; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}" >/dev/null
fi

docker info >/dev/null 2>&1 && exit 0
root || { echo "no Docker daemon answers, and starting one needs root" >&2; exit 1; }
command -v dockerd >/dev/null || { echo "dockerd is not installed (apt-get install docker.io)" >&2; exit 1; }

start() {
    nohup dockerd "$@" >>"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 1
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    return 1
}
start || start --iptables=false --bridge=none \
    || { echo "dockerd did not start (log: $log)" >&2; exit 1; }
