"""benchmarks/trace_kernels.py on a hand-made trace: kernels attributed to the frame that launched them."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "trace_kernels.py"


def _module():
    spec = importlib.util.spec_from_file_location("trace_kernels", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kernels_attributed_to_the_innermost_frame_of_ours(tmp_path, capsys):
    py = "python_function"
    events = [
        # host thread 1: step() > dcb_ddA() launches kernel A at t=15; a torch frame inside is ignored
        {"cat": py, "name": "benchmarks/gpu_profile.py(25): step", "tid": 1, "ts": 0, "dur": 100},
        {"cat": py, "name": "src/cellmamba/models/_ssd.py(95): dcb_ddA", "tid": 1, "ts": 10, "dur": 20},
        {"cat": py, "name": "torch/_tensor.py(1): sum", "tid": 1, "ts": 12, "dur": 5},
        {"cat": "cpu_op", "name": "aten::sum", "tid": 1, "ts": 14, "dur": 3},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "tid": 1, "ts": 15, "dur": 1, "args": {"correlation": 7}},
        # autograd thread 2: no frames of ours
        {"cat": "cpu_op", "name": "aten::mm", "tid": 2, "ts": 50, "dur": 5},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "tid": 2, "ts": 51, "dur": 1, "args": {"correlation": 8}},
        # the GPU: A runs 20-30, then B after a 40 us gap
        {"cat": "kernel", "name": "reduce_kernel", "ts": 20, "dur": 10, "args": {"correlation": 7}},
        {"cat": "kernel", "name": "gemm", "ts": 70, "dur": 30, "args": {"correlation": 8}},
    ]
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump({"traceEvents": events}, fh)
    _module().main([str(path)])
    out = capsys.readouterr().out
    assert "2 kernels, 0.04 ms busy in a 0.08 ms span (0.04 ms idle between them)" in out
    assert "cellmamba/models/_ssd.py(95): dcb_ddA | aten::sum | reduce_kernel" in out
    assert "(autograd backward) | aten::mm | gemm" in out
    assert "    40.0 us at    0.05 ms  gemm" in out
