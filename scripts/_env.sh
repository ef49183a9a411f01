# Shared by scripts/run and scripts/test: a virtualenv with the project and its dev tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/pip install --quiet --upgrade pip
    # CPU torch for the funnel tier first: PyPI's default torch wheel brings gigabytes of CUDA libraries.
    # Where a CPU wheel is on local disk (pip's find-links, as on our CI machines) this takes it; elsewhere
    # set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
    .venv/bin/pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    .venv/bin/pip install --quiet -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
if [ ! -d node_modules/htmx.org ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --silent
fi
export PATH="$PWD/.venv/bin:$PATH"
