#!/usr/bin/env bash
# Create or refresh the project's virtual environment: a torch suited to this machine first
# (so pip never replaces it with gigabytes of CUDA wheels on a CPU machine), then cellmamba
# in editable mode with its workflow and test extras. Idempotent; `make` calls it.
#
#   VENV=.venv                 where the environment lives
#   TORCH_SPEC="torch==2.x"    override the torch requirement entirely
#   TORCH_INDEX_URL=...        override the index torch comes from
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}
TORCH_RANGE="torch>=2.4,<2.16"          # keep in step with pyproject.toml
CPU_INDEX="https://download.pytorch.org/whl/cpu"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

have_torch=$("$PY" - <<'PY' 2>/dev/null || true
import torch, sys
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
print("ok" if (2, 4) <= (major, minor) < (2, 16) else "")
PY
)
if [ -n "$have_torch" ]; then
    log "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
elif [ -n "${TORCH_SPEC:-}" ]; then
    log "installing $TORCH_SPEC (TORCH_SPEC)"
    pip_install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "NVIDIA GPU found: installing the CUDA build of $TORCH_RANGE"
    pip_install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_RANGE"
elif [ "$(uname -s)" = Darwin ]; then
    pip_install "$TORCH_RANGE"
else
    # A CPU-only Linux machine: the CPU wheel index keeps CUDA libraries out. Where it cannot
    # be reached (offline mirrors), take torch 2.13.0, which such mirrors serve as a CPU wheel.
    if "$PY" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/', timeout=5)" >/dev/null 2>&1; then
        log "no GPU: installing $TORCH_RANGE from the CPU wheel index"
        pip_install --index-url "${TORCH_INDEX_URL:-$CPU_INDEX}" "$TORCH_RANGE"
    else
        log "no GPU and the CPU wheel index is unreachable: installing torch==2.13.0 from the configured index"
        pip_install "torch==2.13.0"
    fi
fi

log "installing cellmamba[$EXTRAS] (editable)"
pip_install -e ".[$EXTRAS]"

# The GEARS 0.0.2 split test runs GEARS' own DataSplitter: its source without dependencies
# (torch_geometric etc. are not needed by the splitter, and the test never imports gears/__init__).
if [[ ",$EXTRAS," == *",test,"* ]] && ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('gears') is None)"; then
    log "installing cell-gears==0.0.2 (source only, --no-deps) for the split test"
    pip_install --no-deps "cell-gears==0.0.2" || log "warning: could not install cell-gears 0.0.2; its test will skip"
fi

# scib's LISI ships a prebuilt binary that needs GLIBC 2.38; rebuild it from the C++ source it ships
# when scib is installed and a compiler exists (issue 5 uses it).
if "$PY" -c "import scib" >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1; then
    "$PY" -m cellmamba.metrics._lisi_build >/dev/null 2>&1 || log "warning: could not rebuild scib's LISI binary"
fi
log "ready: $("$PY" -c 'import torch, cellmamba; print("torch", torch.__version__, "cellmamba", cellmamba.__version__)')"
