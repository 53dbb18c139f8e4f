"""Tokenizer throughput and peak memory, file in -> shards out, one pinned core.

Corpora (written under ``--work``, git-ignored):

- ``qc_20k.h5ad``: the peers' corpus (``$PEERS_DATA/gf_in/cells.h5ad``, made by
  ../shared/bench/peers/setup.sh: 20,000 cells x 20,000 genes, negative-binomial, ~1,950
  non-zeros per cell) rewritten in the QC shard layout (obs dataset_id, varm measured, uns);
  gene_stats from the peers' Geneformer median dictionary (the medians Geneformer gets).
- ``qc_<N>.h5ad``: ``--big-cells`` cells (default 100,000) from the same generator
  (gen_data.py's model, other seed), written chunk by chunk.

Each of our tokenizers runs in a fresh subprocess under ``taskset -c 0`` with one thread
(OMP / NUMBA / MKL), after a warm-up on a tiny file (loads the numba cache); the timed part is
:func:`cellmamba.tokenize.tokenize_h5ad` end to end (read h5ad, tokenize, write + checksum the
shard). Peak memory is the child's ``VmHWM``. With ``--peers`` the peer tokenizers run through
../shared/bench/peers/run.sh on the 20k corpus in the same session (needs PEERS_VENV and
PEERS_DATA), and ratios ours / peer are recorded.

    PEERS_VENV=$PWD/.peers-venv PEERS_DATA=$PWD/peers-data \\
      nice -n 10 .venv/bin/python benchmarks/bench_tokenizers.py --peers --out benchmarks/results/tokenizers.csv
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the peers' benchmark folder: ../shared/bench/peers beside the checkout, or $PEERS_DIR, or --peers-dir
PEERS = Path(os.environ.get("PEERS_DIR", REPO.parent / "shared" / "bench" / "peers"))
N_GENES = 20_000

_CHILD = r"""
import json, sys, time, shutil
from cellmamba.tokenize import tokenize_h5ad
a = json.loads(sys.argv[1])
kw = dict(tokenizer=a["op"], gene_stats=a.get("gene_stats"), positions=a.get("positions"), chunk_cells=a["chunk"])
tokenize_h5ad(a["tiny"], a["out"] + ".warm", **kw)  # numba cache load, file-format code paths
shutil.rmtree(a["out"] + ".warm")
times = []
for r in range(a["repeats"]):
    shutil.rmtree(a["out"], ignore_errors=True)  # replacing an old shard is not part of the timing
    t0 = time.perf_counter()
    m = tokenize_h5ad(a["in"], a["out"], **kw)
    times.append(time.perf_counter() - t0)
hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("RESULT " + json.dumps({"times_s": times, "n_cells": m["n_cells"], "n_tokens": m["n_tokens"],
                             "peak_rss_mb": hwm_kb / 1024}))
"""


def _qc_layout(X, path: Path, ids: np.ndarray) -> None:
    """Write CSR counts ``X`` as a QC shard (one dataset measuring every gene)."""
    import anndata as ad
    import pandas as pd

    n = X.shape[0]
    a = ad.AnnData(X=X, obs=pd.DataFrame({"dataset_id": pd.Categorical(["bench"] * n)}, index=[str(i) for i in range(n)]),
                   var=pd.DataFrame({"feature_id": ids, "feature_name": [f"GENE{i}" for i in range(len(ids))]}, index=ids))
    a.varm["measured"] = np.ones((len(ids), 1), dtype=bool)
    a.uns["cellmamba"] = {"measured_datasets": ["bench"]}
    a.write_h5ad(path)


def _generate(n_cells: int, path: Path, ids: np.ndarray, *, seed: int) -> None:
    """gen_data.py's negative-binomial model, appended chunk by chunk (bounded memory)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(12345)
    mu = np.exp(rng.normal(0.0, 2.05, N_GENES))  # same gene means as the peers' corpus
    mu /= mu.sum()
    rng = np.random.default_rng(seed)
    first = True
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        for s in range(0, n_cells, 1000):
            n = min(1000, n_cells - s)
            lib = np.exp(rng.normal(np.log(4500), 0.35, n))
            lam = (lib[:, None] * mu[None, :]).astype(np.float32)
            g = rng.gamma(2.0, 0.5, size=(n, N_GENES)).astype(np.float32)
            X = sp.csr_matrix(rng.poisson(lam * g).astype(np.float32))
            if first:
                ad.io.write_elem(f, "X", X, dataset_kwargs={"chunks": (1 << 18,)})  # anndata makes it resizable
                first = False
            else:
                ad.io.sparse_dataset(f["X"]).append(X)
        ad.io.write_elem(f, "obs", pd.DataFrame({"dataset_id": pd.Categorical(["bench"] * n_cells)},
                                                index=[str(i) for i in range(n_cells)]))
        ad.io.write_elem(f, "var", pd.DataFrame({"feature_id": ids, "feature_name": [f"GENE{i}" for i in range(N_GENES)]},
                                                index=ids))
        ad.io.write_elem(f, "varm", {"measured": np.ones((N_GENES, 1), dtype=bool)})
        ad.io.write_elem(f, "uns", {"cellmamba": {"measured_datasets": np.array(["bench"])}})
        for key in ("obsm", "layers", "obsp", "varp"):
            ad.io.write_elem(f, key, {})
    tmp.replace(path)


def prepare(work: Path, peers_data: Path, big_cells: int) -> dict:
    import anndata as ad
    import pandas as pd

    work.mkdir(parents=True, exist_ok=True)
    src = ad.read_h5ad(peers_data / "gf_in" / "cells.h5ad")
    ids = src.var["ensembl_id"].to_numpy().astype(str)
    files = {"qc_20k": work / "qc_20k.h5ad", "tiny": work / "qc_tiny.h5ad",
             f"qc_{big_cells // 1000}k": work / f"qc_{big_cells // 1000}k.h5ad", "gene_stats": work / "gene_stats.tsv"}
    if not files["qc_20k"].exists():
        _qc_layout(src.X, files["qc_20k"], ids)
    if not files["tiny"].exists():
        _qc_layout(src.X[:300], files["tiny"], ids)
    if not files["gene_stats"].exists():
        with open(peers_data / "gene_median_dictionary.pkl", "rb") as fh:
            med = pickle.load(fh)
        pd.DataFrame({"feature_id": ids, "feature_name": [f"GENE{i}" for i in range(len(ids))],
                      "n_cells_measured": src.n_obs, "n_cells_detected": 0,
                      "nonzero_median": [med[i] for i in ids]}).to_csv(files["gene_stats"], sep="\t", index=False)
    big = files[f"qc_{big_cells // 1000}k"]
    if not big.exists():
        _generate(big_cells, big, ids, seed=777)
    return files


def _pinned_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "NUMBA_NUM_THREADS": "1"}


def run_ours(op: str, corpus: Path, files: dict, work: Path, repeats: int, chunk: int) -> dict:
    args = {"op": op, "in": str(corpus), "out": str(work / "out" / op), "tiny": str(files["tiny"]),
            "repeats": repeats, "chunk": chunk}
    if op == "rank":
        args["gene_stats"] = str(files["gene_stats"])
    if op == "patch":
        args["positions"] = str(files["positions"])
    cmd = ["taskset", "-c", "0", sys.executable, "-c", _CHILD, json.dumps(args)]
    out = subprocess.run(cmd, env=_pinned_env(), capture_output=True, text=True, check=True).stdout
    res = json.loads(next(s for s in out.splitlines() if s.startswith("RESULT "))[7:])
    res["cells_per_s"] = res["n_cells"] / statistics.median(res["times_s"])
    return res


def run_peer(op: str, peers_dir: Path = PEERS) -> dict:
    venv = os.environ.get("PEERS_VENV", str(REPO / ".peers-venv"))
    env = {**os.environ, "PATH": f"{venv}/bin:{os.environ['PATH']}", "VIRTUAL_ENV": venv,
           "PEERS_DATA": os.environ.get("PEERS_DATA", str(REPO / "peers-data"))}
    if not (peers_dir / "run.sh").is_file():
        raise FileNotFoundError(f"{peers_dir / 'run.sh'}: the peers' benchmark is not there; pass --peers-dir "
                                "(or PEERS_DIR) with the folder that holds setup.sh and run.sh")
    out = subprocess.run(["bash", str(peers_dir / "run.sh"), op], env=env, capture_output=True, text=True).stdout
    line = next((s for s in out.splitlines() if s.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"peer {op} gave no RESULT:\n{out[-2000:]}")
    res = json.loads(line[7:])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    res["peak_rss_mb"] = int(m.group(1)) / 1024 if m else res.get("peak_rss_mb")
    return res


def _positions_for(ids: np.ndarray, path: Path) -> Path:
    """Synthetic hg38-like positions for the generated genes (the real table has no such ids)."""
    import pandas as pd

    if not path.exists():
        rng = np.random.default_rng(3)
        chrom = rng.choice([str(c) for c in range(1, 23)] + ["X", "Y", "MT"], size=len(ids))
        pd.DataFrame({"entrez_id": np.arange(len(ids)), "symbol": ids, "ensembl_ids": ids, "chromosome": chrom,
                      "start": rng.integers(0, 2_000_000_00, len(ids)), "end": 0, "strand": "+",
                      "gene_type": "protein-coding"}).iloc[: int(len(ids) * 0.95)].to_csv(path, sep="\t", index=False)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "tokenizers")
    p.add_argument("--peers-data", type=Path, default=Path(os.environ.get("PEERS_DATA", REPO / "peers-data")))
    p.add_argument("--big-cells", type=int, default=100_000)
    p.add_argument("--ops", nargs="+", default=["rank", "binned", "patch"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-cells", type=int, default=4096)
    p.add_argument("--peers", action="store_true", help="also time the peers on the 20k corpus (run.sh)")
    p.add_argument("--peers-dir", type=Path, default=PEERS,
                   help="the peers' benchmark folder (setup.sh, run.sh); default ../shared/bench/peers beside the checkout")
    p.add_argument("--reuse-peers", action="store_true",
                   help="take the peer rows (and ratios) from the existing --out file instead of rerunning them")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tokenizers.csv")
    a = p.parse_args(argv)

    files = prepare(a.work, a.peers_data, a.big_cells)
    import anndata as ad
    ids = ad.read_h5ad(files["tiny"], backed="r").var_names.to_numpy().astype(str)
    files["positions"] = _positions_for(ids, a.work / "positions.tsv")
    machine = f"{platform.machine()} {_cpu_model()}, {os.cpu_count()} cores (shared), 1 pinned"
    date = datetime.date.today().isoformat()
    rows = []

    peers = {}
    if a.peers:
        for op in ("gf_helical", "scgpt_prep_bin", "scgpt_tok_1200"):
            peers[op] = run_peer(op, a.peers_dir)
            print(op, peers[op], flush=True)
            rows.append({"op": {"gf_helical": "rank", "scgpt_prep_bin": "binned",
                                "scgpt_tok_1200": "binned"}[op], "tool": op, "n_cells": peers[op]["n_cells"],
                         "cells_per_s_per_core": round(peers[op]["cells_per_s"]),
                         "peak_rss_mb": round(peers[op]["peak_rss_mb"]), "ratio_vs_peer": "",
                         "notes": "peer, median of 3 (run.sh)"})
    elif a.reuse_peers and a.out.exists():
        with open(a.out) as fh:
            for r in csv.DictReader(fh):
                if r["tool"] != "cellmamba":
                    peers[r["tool"]] = {"cells_per_s": float(r["cells_per_s_per_core"])}
                    rows.append({k: r[k] for k in ("op", "tool", "n_cells", "cells_per_s_per_core", "peak_rss_mb",
                                                   "ratio_vs_peer", "notes")})
                    machine, date = r["machine"], r["date"]
    pair = {"rank": "gf_helical", "binned": "scgpt_prep_bin"}
    big_name = f"qc_{a.big_cells // 1000}k"
    for corpus in ("qc_20k", big_name):
        for op in a.ops:
            res = run_ours(op, files[corpus], files, a.work, a.repeats, a.chunk_cells)
            print(corpus, op, res, flush=True)
            peer = pair.get(op) if corpus == "qc_20k" else None
            ratio = round(res["cells_per_s"] / peers[peer]["cells_per_s"], 1) if peer in peers else ""
            note = f"vs {peer}" if ratio != "" else ""
            if op == "binned" and corpus == "qc_20k" and "scgpt_tok_1200" in peers:
                note += f"; {res['cells_per_s'] / peers['scgpt_tok_1200']['cells_per_s']:.1f}x scgpt_tok_1200"
            rows.append({"op": op, "tool": "cellmamba", "n_cells": res["n_cells"],
                         "cells_per_s_per_core": round(res["cells_per_s"]), "peak_rss_mb": round(res["peak_rss_mb"]),
                         "ratio_vs_peer": ratio,
                         "notes": f"file in -> shard out, chunk_cells {a.chunk_cells}, median of "
                                  f"{len(res['times_s'])}; {note}".rstrip("; ")})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["op", "tool", "n_cells", "cells_per_s_per_core", "peak_rss_mb",
                                           "ratio_vs_peer", "machine", "date", "notes"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "machine": machine, "date": date})
    print(f"wrote {a.out}")


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
