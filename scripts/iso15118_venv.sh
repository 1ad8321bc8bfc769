#!/usr/bin/env bash
# The ISO 15118 sidecar's virtual environment, .venv-iso15118 at the repository root (or
# $CP_AGENT_ISO15118_VENV): the `iso15118` package pins cryptography==44.0.0 and pydantic 1.x,
# which cannot share the agent's venv, so the SECC runs as a separate process in its own
# (hal/iso15118/sidecar.py). Its EXI codec runs on a Java runtime (py4j): scripts/system_deps.sh
# installs default-jre-headless where java is missing. Sourced by scripts/test; run on its own
# on a board: bash scripts/iso15118_venv.sh
_ISO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ISO15118_VENV="${CP_AGENT_ISO15118_VENV:-$_ISO_ROOT/.venv-iso15118}"
_ISO_REQ="$_ISO_ROOT/hal/iso15118/requirements.txt"
_ISO_PY="${PYTHON:-python3}"
if [ ! -x "$ISO15118_VENV/bin/python" ]; then
  if ! "$_ISO_PY" -m venv "$ISO15118_VENV" 2>/dev/null; then
    rm -rf "$ISO15118_VENV"
    echo "python3 -m venv failed for the ISO 15118 sidecar (sudo apt install python3-venv);" \
         "its tests skip" >&2
  fi
fi
# Reinstall only when the requirements changed (fast re-runs).
_ISO_STAMP="$ISO15118_VENV/.cp-agent-installed"
if [ -x "$ISO15118_VENV/bin/python" ] && { [ ! -f "$_ISO_STAMP" ] || [ "$_ISO_REQ" -nt "$_ISO_STAMP" ]; }; then
  if "$ISO15118_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$_ISO_REQ"; then
    touch "$_ISO_STAMP"
  else
    echo "the ISO 15118 sidecar's packages did not install; its tests skip" >&2
  fi
fi
export CP_AGENT_ISO15118_VENV="$ISO15118_VENV"
