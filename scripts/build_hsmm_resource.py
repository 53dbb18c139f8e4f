#!/usr/bin/env python3
"""Build resources/demo/hsmm_trapnell2014_fpkm.h5ad: the HSMM myoblast time course (trajectory demo).

Source: the Bioconductor data package HSMMSingleCell as Debian ships it (r-bioc-hsmmsinglecell,
Artistic-2.0), converted to h5ad (271 cells x 47,192 genes) in ../shared/data/real/. Trapnell et
al. 2014 (Nat Biotechnol 32:381, GEO GSE52529): primary human skeletal muscle myoblasts in growth
medium (0 h), then switched to differentiation medium and sampled at 24, 48 and 72 h (Fluidigm C1,
full-length reads, Cufflinks FPKM). obs ``Hours`` is the measured time, ``Pseudotime`` /
``State`` are Monocle's ordering as the package ships them.

What this script changes, and nothing else:

- genes with no non-zero value in any of the 271 cells are dropped (47,192 -> 26,521 genes;
  every stored value is kept as it is, float32 FPKM);
- the file is written with gzip level 9 (anndata's writer).

Usage::

    python scripts/build_hsmm_resource.py ../shared/data/real/hsmm_trapnell2014_fpkm.h5ad \
        resources/demo/hsmm_trapnell2014_fpkm.h5ad
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def build(source: str | Path, out: str | Path) -> tuple[int, int]:
    """Drop the genes expressed in no cell and write the rest gzip-compressed.

    Returns
    -------
    (genes kept, genes dropped)
    """
    import anndata as ad

    adata = ad.read_h5ad(source)
    # a stored explicit zero is not expression
    expressed = np.asarray((sp.csc_matrix(adata.X) != 0).sum(axis=0)).ravel() > 0
    kept = adata[:, expressed].copy()
    kept.X = sp.csr_matrix(kept.X, dtype=np.float32)
    kept.X.eliminate_zeros()
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    kept.write_h5ad(tmp, compression="gzip", compression_opts=9)
    tmp.replace(out)
    return int(expressed.sum()), int((~expressed).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", help="hsmm_trapnell2014_fpkm.h5ad as converted from HSMMSingleCell")
    parser.add_argument("out", help="resources/demo/hsmm_trapnell2014_fpkm.h5ad")
    args = parser.parse_args(argv)
    n_kept, n_dropped = build(args.source, args.out)
    print(f"{args.out}: {n_kept} genes kept, {n_dropped} expressed in no cell dropped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
