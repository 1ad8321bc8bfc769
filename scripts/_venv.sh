# Sourced by scripts/demo and scripts/test: make sure .venv exists and holds the project.
# Debian and Raspberry Pi OS lock the system pip (PEP 668), so everything goes in a venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CP_AGENT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "cp-agent needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    # Debian ships venv separately; install it when we may, say so when we may not.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$PY" -m venv "$VENV"
    else
      echo "python3 -m venv failed: install it with  sudo apt install python3-venv" >&2
      exit 1
    fi
  fi
fi

# Reinstall only when the packaging changed (fast re-runs).
STAMP="$VENV/.cp-agent-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
  touch "$STAMP"
fi
