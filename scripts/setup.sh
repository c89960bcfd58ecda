#!/usr/bin/env bash
# Create .venv and install everything scarce-cxr needs. Idempotent: re-running skips what is done.
#   scripts/setup.sh           Python packages only
#   scripts/setup.sh --browser also Debian's chromium + chromium-driver for the real-browser test
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "error: Python 3.11+ not found; install python3.11 and retry" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: $PY is older than 3.11" >&2; exit 1; }

stamp=.venv/.installed-$(sha1sum requirements.txt | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision: CUDA builds from PyPI (there is no CPU torchvision build); they also run on CPU.
  .venv/bin/python -m pip install -q -r requirements.txt
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# scarce-cxr itself, as an editable package (pyproject.toml): `import engine` / `import ui` work from
# any folder, so no script needs a sys.path hack. --no-deps: requirements.txt above is the one list of
# dependencies; --no-build-isolation: build with the venv's own setuptools, nothing downloaded for it
# (installed here first only when the venv lacks setuptools >= 64, e.g. Python 3.12 venvs).
pkgstamp=.venv/.package-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
installed() {  # -I: not from the current folder, only as an installed package
  .venv/bin/python -I -c 'import importlib.util as u, sys; sys.exit(u.find_spec("engine") is None)' 2>/dev/null
}
if [ ! -f "$pkgstamp" ] || ! installed; then
  .venv/bin/python -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' \
    >/dev/null 2>&1 || .venv/bin/python -m pip install -q "setuptools>=64"
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.package-*
  touch "$pkgstamp"
fi

if [ "${1:-}" = "--browser" ]; then
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi
    if [ "$SUDO" = none ]; then
      echo "warning: chromium/chromedriver missing and no root: the browser test will be skipped" >&2
    else
      $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
        || echo "warning: could not install chromium; the browser test will be skipped" >&2
    fi
  fi
fi
