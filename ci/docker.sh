#!/usr/bin/env bash
# Makes a Docker daemon answer on this machine: installs docker.io (and mmdebstrap, which the
# offline images need, and Compose, which tests/e2e/test_compose.py drives) when missing, starts dockerd in the background and waits until it answers.
# Idempotent: does nothing when a daemon already answers. CI calls it from .ci/run.
set -euo pipefail

LOG_DIR="${DOCKERD_LOG_DIR:-/var/log}"
WAIT_SECONDS="${DOCKERD_WAIT_SECONDS:-60}"

log() { printf '[ci/docker.sh] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    log "dockerd already answers"
    exit 0
fi

log "starting dockerd (log: $LOG_DIR/dockerd.log)"
as_root mkdir -p "$LOG_DIR"
# setsid + nohup: the daemon outlives this script and the CI step that ran it.
as_root setsid nohup dockerd >"$LOG_DIR/dockerd.log" 2>&1 </dev/null &

for _ in $(seq "$WAIT_SECONDS"); do
    if docker info >/dev/null 2>&1; then
        log "dockerd answers: server $(docker version --format '{{.Server.Version}}')"
        exit 0
    fi
    sleep 1
done
log "dockerd did not answer within ${WAIT_SECONDS}s; last lines of its log:"
tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
exit 1
