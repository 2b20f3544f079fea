#!/usr/bin/env bash
# Make .venv a link to a cached virtual environment keyed by the hash of
# requirements.txt (~5.5 GB with torch), creating it when missing, then
# install this package into it (editable, no build isolation, no CUDA build).
# SSTKD_VENV overrides the cached location.
set -euo pipefail
cd "$(dirname "$0")/.."
key=$(cat requirements.txt | sha256sum | cut -c1-16)
venv=${SSTKD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sstkd/venv-$key}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.sstkd-complete" ]; then
    echo "[sstkd] creating the environment $venv (one time, ~1-3 min)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r requirements.txt
    touch "$venv/.sstkd-complete"
fi
if [ "$(readlink .venv 2>/dev/null || true)" != "$venv" ]; then
    rm -rf .venv
    ln -s "$venv" .venv
fi
# Editable install of this checkout (cheap; re-run every time so that a
# second clone sharing the cached venv points the package at itself).
# setuptools prints a warning box for every editable build: show the log only on failure.
log=$(mktemp)
if ! SSTKD_BUILD_CUDA=${SSTKD_BUILD_CUDA:-0} .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >"$log" 2>&1; then
    cat "$log"; rm -f "$log"; exit 1
fi
rm -f "$log"
