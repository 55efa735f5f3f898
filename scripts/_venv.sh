# Sourced by scripts/tc, scripts/test and scripts/check: makes .venv exist and match
# the pinned lock file, then puts it first on PATH. Re-installs only when
# pyproject.toml or requirements.lock changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TC_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.tc-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "TrafficControl needs Python 3.11 or newer (set PYTHON=...)")'
    echo "bootstrap: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
    echo "bootstrap: installing pinned dependencies into $VENV (first run takes a minute)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$ROOT/requirements.lock" -e "$ROOT[dev]" >&2
    echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
