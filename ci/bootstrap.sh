#!/usr/bin/env bash
# What a bare Debian/Ubuntu machine needs before `nox`: nox and uv, plus the PostgreSQL and Redis
# server binaries the `native` test services use when no Docker daemon answers. Idempotent.
set -euo pipefail

log() { printf '[ci/bootstrap.sh] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    # policy-rc.d 101: install the binaries without starting system-wide servers.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    [ "$own_policy" -eq 0 ] || as_root rm -f /usr/sbin/policy-rc.d
fi

if ! command -v nox >/dev/null 2>&1 || ! command -v uv >/dev/null 2>&1; then
    log "installing nox and uv"
    python3 -m pip install --quiet --disable-pip-version-check nox uv
fi
log "ready: nox $(nox --version 2>&1), $(uv --version)"
