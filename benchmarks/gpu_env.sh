# Sourced by the GPU scripts on a lent CUDA machine (no internet): install the wheels carried in
# $WHEELS (default .whl/: anndata, scanpy and their missing dependencies, mamba-ssm,
# causal-conv1d) into $SITE, restore a Triton cache carried beside them, and put the package on
# PYTHONPATH. `pack_triton_cache DIR` writes the cache back in parts (call it before exiting).
# A pure-Python mamba_ssm wheel imports Mamba1's compiled selective_scan_cuda unconditionally:
# an empty stand-in lets its Mamba2 (Triton) path import (cellmamba refuses Mamba1 then).
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/rehearse-site}
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache} TRITON_CACHE_AUTOTUNING=1
export ANNDATA_ALLOW_WRITE_NULLABLE_STRINGS=1  # pandas >= 3 there: anndata writes its string arrays
# a Triton cache from an earlier command of the same session (compiling and autotuning the
# kernels takes minutes on a fresh machine): xz (a third of gzip's size, so it fits in what a
# command may carry beside the wheels), in parts that fit what comes back from it
if ls "$WHEELS"/triton-cache.txz.part-* >/dev/null 2>&1; then
    mkdir -p "$TRITON_CACHE_DIR" && cat "$WHEELS"/triton-cache.txz.part-* | xz -d | tar -xf - -C "$TRITON_CACHE_DIR"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl 2>&1 | grep -v -i "warning\|conflict" | tail -3
python3 -c "import selective_scan_cuda" 2>/dev/null || : > "$SITE/selective_scan_cuda.py"
export PYTHONPATH=$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export CELLMAMBA_CODE=${CELLMAMBA_CODE:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
python3 - <<'PY'
import torch, mamba_ssm, causal_conv1d
from cellmamba.models import _fused
print("torch", torch.__version__, torch.cuda.get_device_name(), "mamba_ssm", mamba_ssm.__version__,
      "causal_conv1d", causal_conv1d.__version__, "fused path:", _fused.available(torch.empty(1, device="cuda")), flush=True)
PY

pack_triton_cache() {
    tar -cf - -C "$TRITON_CACHE_DIR" . 2>/dev/null | xz -T0 -9 | split -b 15m - "$1/triton-cache.txz.part-"
}
