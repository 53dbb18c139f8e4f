"""A simulated paired RNA + ATAC (10x Multiome-like) dataset with known ground truth, written in
the layout of the NeurIPS 2021 BMMC multiome h5ad (DATASETS.md 6), for the multi-omics demo.

No real paired RNA + ATAC data can be shipped or downloaded here, so the demo uses this
documented simulator. Everything is drawn from seeded generators, in this order:

RNA (:func:`cellmamba.datasets.simulate_integration`, called with ``seed``; its model, not a copy):

1. profiles ``P`` (n_types, n_genes): the cell-type means of scanpy's bundled
   ``pbmc68k_reduced`` (:func:`cellmamba.datasets.pbmc68k_profiles`: ``.raw`` expm1 means per
   ``bulk_labels``, 10 FACS-sorted types), restricted to the genes whose symbol has an Ensembl id
   and a position on chromosomes 1-22, X, Y in the gene position table (698 of the 765 with the
   shipped ``resources/genes/human_gene_positions_hg38.tsv.gz``), rows renormalised to sum 1.
2. per-batch cell-type composition (Dirichlet), gene-wise log-normal batch factors, per-batch
   and per-cell library sizes, negative-binomial counts (see ``simulate_integration``).

ATAC (``numpy.random.default_rng([seed, 1])``, in this order):

3. linked peaks: for each gene, ``k ~ U{peaks_per_gene}`` peaks. The first is the promoter
   peak, centred within +-``promoter_jitter`` bp of the TSS (the table's ``start`` for + strand
   genes, ``end`` for - strand ones); the others are distal, centred at
   ``TSS +- U(distal_range)`` bp, on the gene's chromosome. Widths ``U(peak_width)`` bp.
4. per linked peak an intercept ``a ~ N(*intercept)`` and a slope ``b ~ U(*slope)``.
5. background (unlinked) peaks: chromosome drawn in proportion to the table's genes on it,
   centre uniform over [1, last gene end on that chromosome]; intercept ``a ~ N(*background_intercept)``,
   slope 0. Overlapping peaks are then pushed apart (each starts >= 50 bp after the previous
   one's end, in genomic order), so the peak set is disjoint like a real merged peak set.
6. accessibility ``p[t, peak] = sigmoid(a + b * z[t, gene])``, z = the gene's standardised
   log expression across cell types: ``log1p(1e4 P[t, g])`` minus its mean over types, divided
   by its sd over types (floored at 0.1, so near-constant genes are not inflated).
   Background peaks: ``sigmoid(a)``, the same in every cell type.
7. depth per cell ``D = atac_depth * batch depth factor * exp(N(-v^2/2, v))``, v = ``atac_depth_sd``;
   batch depth factors ``exp(N(0, batch_depth_sd))``.
8. ATAC counts ``~ Poisson(p[type, peak] * D)`` (small integers, mostly 0 / 1 / 2).

Layout written (the BMMC multiome file's, so :func:`cellmamba.datasets.read_bmmc` reads it):
one AnnData with GEX then ATAC features; var index = gene symbols / peak names spelled
``chr1-9776-10668`` (ATAC peaks in genomic order); var ``feature_types`` (``GEX`` / ``ATAC``),
``gene_id`` (Ensembl id for GEX, the peak name for ATAC, as in the real file); layer
``counts``: raw integer counts (CSR float32, as published); X: normalised values, computed per
modality block: ``log1p(counts / cell total of that modality * 1e4)`` for GEX AND for ATAC.
(The published ATAC X is "normalized" without a documented method; we use the same
log-normalisation as GEX rather than TF-IDF, and say so here.) obs ``cell_type``, ``batch``
(``s1d1``, ``s1d2``, ``s1d3``, ``s2d4``, ...: site = batch // 3 + 1, donor = batch + 1),
``Site`` (``site1``...), ``DonorID`` (int, 10000 + donor), ``true_library_size``,
``true_atac_depth``. Simulation-only var columns: ``linked_gene`` (the GEX symbol a peak is
linked to; "" for background peaks and for genes), ``peak_kind`` (``promoter`` / ``distal`` /
``background``; "" for genes), ``accessibility_intercept`` and ``accessibility_slope`` (NaN for
genes). ``uns["simulation"]``: ``simulated`` True, the seed, every parameter, the cell types, the
profiles (n_types, n_genes), z, composition, batch factors and the peak table (name, chromosome,
start, end, linked gene, kind, a, b).

Departures from real data, on purpose: accessibility depends on the cell type only (no
cell-level co-variation of a gene and its peaks beyond the type), and there is no
fragment-level model (no Tn5 insertions, no fragment-length or TSS-enrichment QC).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..io import atomic_path
from ..keys import LAYER_COUNTS, OBS_BATCH, OBS_CELL_TYPE, UNS, VAR_LINKED_GENE, VAR_PEAK_KIND, VARM_BATCH_FACTOR
from .simulate import UNS_SIMULATION, pbmc68k_profiles, simulate_integration

if TYPE_CHECKING:  # annotations only: anndata is imported where it is used
    import anndata as ad

__all__ = ["simulate_multiome", "write_simulated_multiome", "multiome_gene_table", "default_positions_path",
           "VAR_LINKED_GENE", "VAR_PEAK_KIND", "POSITIONS_FILE"]

log = logging.getLogger(__name__)

#: the gene position table, relative to the repository root
POSITIONS_FILE = Path("resources") / "genes" / "human_gene_positions_hg38.tsv.gz"
_CHROMOSOMES = [str(i) for i in range(1, 23)] + ["X", "Y"]
_Z_SD_FLOOR = 0.1
_PEAK_GAP = 50


def default_positions_path() -> Path:
    """The shipped gene position table, found relative to the package (a source checkout)."""
    root = Path(__file__).resolve().parents[3]  # src/cellmamba/datasets/<this> -> repository root
    path = root / POSITIONS_FILE
    if not path.exists():
        raise InputError(f"gene position table {path} not found (the package is not run from a source checkout); "
                         f"pass positions= the path of a table in the {POSITIONS_FILE} layout")
    return path


def multiome_gene_table(genes, positions: str | os.PathLike | None = None) -> pd.DataFrame:
    """Ensembl id and TSS of each gene symbol that the position table places on chr1-22, X, Y.

    The table is read here rather than with :func:`cellmamba.tokenize.patch.read_positions`
    because that keeps only Ensembl id, chromosome and start, and the TSS needs the symbol,
    end and strand. A symbol listed several times keeps its first row; a row with several
    Ensembl ids (``;`` or ``,``) keeps the first (the primary assembly's).

    Parameters
    ----------
    genes
        (n,) gene symbols.
    positions
        Table path (columns symbol, ensembl_ids, chromosome, start, end, strand); default
        :func:`default_positions_path`.

    Returns
    -------
    DataFrame indexed by the placed symbols (input order): ``gene_id`` (Ensembl), ``chromosome``
    (``1``..``22``, ``X``, ``Y``), ``start``, ``end``, ``strand``, ``tss``.
    """
    table = _read_table(positions)
    genes = pd.Index(np.asarray(genes).astype(str))
    return table.loc[genes[genes.isin(table.index)]].copy()


def _read_table(positions) -> pd.DataFrame:
    """The position table's placed genes, indexed by symbol (see :func:`multiome_gene_table`)."""
    path = Path(positions) if positions is not None else default_positions_path()
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected a gene position table)") from exc
    missing = [c for c in ("symbol", "ensembl_ids", "chromosome", "start", "end", "strand") if c not in table]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; expected the {POSITIONS_FILE.name} layout")
    chrom = table["chromosome"].str.strip().str.replace(r"^chr", "", regex=True)
    ens = table["ensembl_ids"].str.split(r"[;,]", regex=True).str[0].str.strip().str.split(".").str[0]
    table = table.assign(chromosome=chrom, gene_id=ens)
    table = table[(table["gene_id"] != "") & table["chromosome"].isin(_CHROMOSOMES) & table["strand"].isin(["+", "-"])]
    table = table.drop_duplicates("symbol").set_index("symbol")[["gene_id", "chromosome", "start", "end", "strand"]]
    for col in ("start", "end"):
        values = pd.to_numeric(table[col], errors="coerce")
        if values.isna().any():
            raise InputError(f"{path}: column {col!r} holds a non-integer value for gene(s) "
                             f"{table.index[values.isna()][:5].tolist()}")
        table[col] = values.astype(np.int64)
    table["tss"] = np.where(table["strand"] == "+", table["start"], table["end"]).astype(np.int64)
    table.index.name = None
    return table


def _check(name: str, value, *, allow_zero: bool = False) -> float:
    value = float(value)
    if not np.isfinite(value) or not (value >= 0 if allow_zero else value > 0):
        what = "non-negative" if allow_zero else "positive"
        raise InputError(f"simulate_multiome: {name}={value!r}; expected a {what} finite number")
    return value


def _check_range(name: str, value, *, integer: bool = False, minimum: float = 0.0) -> tuple:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise InputError(f"simulate_multiome: {name}={value!r}; expected a pair (low, high)") from None
    if integer and (int(lo) != lo or int(hi) != hi):
        raise InputError(f"simulate_multiome: {name}={value!r}; expected integers")
    if not (np.isfinite(lo) and np.isfinite(hi) and minimum <= lo <= hi):
        raise InputError(f"simulate_multiome: {name}={value!r}; expected {minimum:g} <= low <= high")
    return (int(lo), int(hi)) if integer else (float(lo), float(hi))


def _standardised_log_expression(P: np.ndarray) -> np.ndarray:
    L = np.log1p(1e4 * P)
    sd = np.maximum(L.std(axis=0), _Z_SD_FLOOR)
    return (L - L.mean(axis=0)) / sd


def _separate(chrom: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genomic order, and overlapping peaks pushed right so each starts _PEAK_GAP bp after the last end."""
    rank = np.array([_CHROMOSOMES.index(c) for c in chrom])
    order = np.lexsort((end, start, rank))
    start, end = start.copy(), end.copy()
    prev_chrom, prev_end = None, -1
    for i in order:  # a loop: each shift depends on the previous peak's shifted end
        if chrom[i] == prev_chrom and start[i] <= prev_end + _PEAK_GAP:
            width = end[i] - start[i]
            start[i] = prev_end + _PEAK_GAP + 1
            end[i] = start[i] + width
        prev_chrom, prev_end = chrom[i], end[i]
    return order, start, end


def _normalise_block(counts: sp.csr_matrix) -> sp.csr_matrix:
    """log1p(counts / cell total * 1e4) of one modality block (scanpy's normalize_total + log1p)."""
    total = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(1e4, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)
    out = sp.csr_matrix(sp.diags(scale) @ counts, dtype=np.float32)
    out.data = np.log1p(out.data)
    return out


def simulate_multiome(*, n_cells: int = 600, n_batches: int = 2, seed: int = 0,
                      positions: str | os.PathLike | None = None, profiles: pd.DataFrame | None = None,
                      peaks_per_gene: tuple[int, int] = (1, 3), n_background_peaks: int = 200,
                      library_size: float = 2000.0, library_sd: float = 0.3, batch_library_sd: float = 0.4,
                      batch_effect_sd: float = 0.5, dispersion: float = 5.0, composition_alpha: float = 2.0,
                      atac_depth: float = 1.0, atac_depth_sd: float = 0.3, batch_depth_sd: float = 0.3,
                      intercept: tuple[float, float] = (-2.0, 0.5), slope: tuple[float, float] = (0.5, 2.0),
                      background_intercept: tuple[float, float] = (-2.0, 0.5),
                      promoter_jitter: int = 300, distal_range: tuple[int, int] = (2_000, 50_000),
                      peak_width: tuple[int, int] = (300, 900)) -> "ad.AnnData":
    """Simulate paired RNA + ATAC counts of real cell types, in the BMMC multiome layout.

    The model is the module docstring's. About 600 cells x 698 genes + ~1,600 peaks with the
    defaults; a few seconds.

    Parameters
    ----------
    n_cells, n_batches, seed
        Size, number of batches (>= 2) and the seed (a non-negative int) of every draw.
    positions
        Gene position table (default: the shipped ``resources/genes/human_gene_positions_hg38.tsv.gz``).
    profiles
        (n_types, n_genes) relative expression, index = cell types, columns = gene symbols;
        default :func:`cellmamba.datasets.pbmc68k_profiles`. Genes the table does not place
        are dropped.
    peaks_per_gene
        (low, high): each gene gets U{low..high} linked peaks (0 allowed: genes without peaks).
    n_background_peaks
        Unlinked peaks at random positions.
    library_size, library_sd, batch_library_sd, batch_effect_sd, dispersion, composition_alpha
        RNA model, as :func:`cellmamba.datasets.simulate_integration`.
    atac_depth
        Expected ATAC count of a fully open peak in an average cell.
    atac_depth_sd, batch_depth_sd
        Sd of the per-cell and per-batch log ATAC depth factors.
    intercept, slope
        Linked peaks: a ~ N(intercept[0], intercept[1]), b ~ U(slope[0], slope[1]).
    background_intercept
        Background peaks: a ~ N(mean, sd), b = 0.
    promoter_jitter, distal_range, peak_width
        Promoter peak centre within +-promoter_jitter bp of the TSS; distal peak centres at
        U(distal_range) bp up- or downstream; widths U(peak_width) bp.

    Returns
    -------
    AnnData (n_cells, n_genes + n_peaks) in the BMMC multiome layout (module docstring): X
    float32 CSR normalised, ``layers["counts"]`` float32 CSR integer counts, obs ``cell_type``,
    ``batch``, ``Site``, ``DonorID``, var ``feature_types``, ``gene_id``, ``linked_gene``,
    ``peak_kind``, ``accessibility_intercept``, ``accessibility_slope``; ``uns["simulation"]``.
    """
    import anndata as ad

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"simulate_multiome: seed={seed!r}; expected a non-negative integer")
    if int(n_batches) < 2 or int(n_cells) < 1:
        raise InputError(f"simulate_multiome: n_cells={n_cells!r}, n_batches={n_batches!r}; expected n_cells >= 1 "
                         "and n_batches >= 2")
    if int(n_background_peaks) < 0:
        raise InputError(f"simulate_multiome: n_background_peaks={n_background_peaks!r}; expected >= 0")
    atac_depth = _check("atac_depth", atac_depth)
    atac_depth_sd = _check("atac_depth_sd", atac_depth_sd, allow_zero=True)
    batch_depth_sd = _check("batch_depth_sd", batch_depth_sd, allow_zero=True)
    promoter_jitter = int(_check("promoter_jitter", promoter_jitter, allow_zero=True))
    peaks_per_gene = _check_range("peaks_per_gene", peaks_per_gene, integer=True)
    distal_range = _check_range("distal_range", distal_range, integer=True)
    peak_width = _check_range("peak_width", peak_width, integer=True, minimum=1)
    slope = _check_range("slope", slope, minimum=-np.inf)
    for name, pair in (("intercept", intercept), ("background_intercept", background_intercept)):
        if len(pair) != 2 or not np.isfinite(pair).all() or pair[1] < 0:
            raise InputError(f"simulate_multiome: {name}={pair!r}; expected (mean, sd) with sd >= 0")

    source = "profiles argument"
    if profiles is None:
        profiles, source = pbmc68k_profiles(), "scanpy.datasets.pbmc68k_reduced(): .raw expm1 means per bulk_labels"
    n_profile_genes = profiles.shape[1]
    table_all = _read_table(positions)
    symbols = pd.Index(np.asarray(profiles.columns).astype(str))
    genes_table = table_all.loc[symbols[symbols.isin(table_all.index)]]
    if len(genes_table) < 2:
        raise InputError(f"simulate_multiome: only {len(genes_table)} of the {profiles.shape[1]} profile genes have an "
                         "Ensembl id and a position in the gene table; expected at least 2")
    profiles = profiles.loc[:, genes_table.index]
    log.info("simulate_multiome: %d of %d profile genes placed on the genome", len(genes_table), n_profile_genes)

    # RNA: the integration simulator's model, called as is (same seed)
    rna = simulate_integration(n_cells=n_cells, n_batches=n_batches, seed=int(seed), profiles=profiles,
                               library_size=library_size, library_sd=library_sd, batch_library_sd=batch_library_sd,
                               batch_effect_sd=batch_effect_sd, dispersion=dispersion,
                               composition_alpha=composition_alpha)
    truth = rna.uns[UNS][UNS_SIMULATION]
    types = np.asarray(truth["cell_types"]).astype(str)
    P = np.asarray(profiles, dtype=np.float64)          # rows in the order of truth["cell_types"]
    P = P / P.sum(axis=1, keepdims=True)
    z = _standardised_log_expression(P)
    cell_type = pd.Index(types).get_indexer(rna.obs[OBS_CELL_TYPE].astype(str))
    batch = rna.obs[OBS_BATCH].cat.codes.to_numpy().astype(np.int64)

    # ATAC
    rng = np.random.default_rng([int(seed), 1])
    n_genes = len(genes_table)
    k = rng.integers(peaks_per_gene[0], peaks_per_gene[1] + 1, size=n_genes)
    gene_of_peak = np.repeat(np.arange(n_genes), k)
    first = np.concatenate([[True], gene_of_peak[1:] != gene_of_peak[:-1]]) if len(gene_of_peak) else np.zeros(0, bool)
    n_linked = len(gene_of_peak)
    tss = genes_table["tss"].to_numpy()[gene_of_peak]
    jitter = rng.integers(-promoter_jitter, promoter_jitter + 1, size=n_linked)
    distance = rng.integers(distal_range[0], distal_range[1] + 1, size=n_linked) * rng.choice([-1, 1], size=n_linked)
    centre = tss + np.where(first, jitter, distance)
    a_linked = rng.normal(intercept[0], intercept[1], size=n_linked)
    b_linked = rng.uniform(slope[0], slope[1], size=n_linked)

    n_bg = int(n_background_peaks)
    if n_linked + n_bg == 0:
        raise InputError(f"simulate_multiome: peaks_per_gene={peaks_per_gene!r} and n_background_peaks=0 drew no peak; "
                         "expected at least one ATAC feature")
    chrom_weight = table_all.groupby("chromosome")["end"].size().reindex(_CHROMOSOMES, fill_value=0).to_numpy(float)
    chrom_end = table_all.groupby("chromosome")["end"].max().reindex(_CHROMOSOMES, fill_value=0).to_numpy()
    bg_chrom_idx = rng.choice(len(_CHROMOSOMES), size=n_bg, p=chrom_weight / chrom_weight.sum())
    bg_centre = (rng.random(n_bg) * chrom_end[bg_chrom_idx]).astype(np.int64) + 1
    a_bg = rng.normal(background_intercept[0], background_intercept[1], size=n_bg)

    widths = rng.integers(peak_width[0], peak_width[1] + 1, size=n_linked + n_bg)
    chrom = np.concatenate([genes_table["chromosome"].to_numpy()[gene_of_peak],
                            np.asarray(_CHROMOSOMES, dtype=object)[bg_chrom_idx]]).astype(str)
    centre = np.concatenate([centre, bg_centre]).astype(np.int64)
    start = np.maximum(centre - widths // 2, 1)
    end = start + widths
    order, start, end = _separate(chrom, start, end)
    linked_gene = np.concatenate([genes_table.index.to_numpy()[gene_of_peak], np.full(n_bg, "")]).astype(str)
    kind = np.concatenate([np.where(first, "promoter", "distal"), np.full(n_bg, "background")]).astype(str)
    a = np.concatenate([a_linked, a_bg])
    b = np.concatenate([b_linked, np.zeros(n_bg)])
    peak_gene = np.concatenate([gene_of_peak, np.full(n_bg, -1)])
    chrom, start, end, linked_gene, kind, a, b, peak_gene = (v[order] for v in
                                                              (chrom, start, end, linked_gene, kind, a, b, peak_gene))
    names = np.array([f"chr{c}-{s}-{e}" for c, s, e in zip(chrom, start, end)])

    logit = a[None, :] + b[None, :] * np.where(peak_gene >= 0, z[:, np.maximum(peak_gene, 0)], 0.0)
    access = 1.0 / (1.0 + np.exp(-logit))                                  # (n_types, n_peaks)
    batch_depth = np.exp(rng.normal(0.0, batch_depth_sd, size=n_batches))
    depth = atac_depth * batch_depth[batch] * np.exp(rng.normal(-atac_depth_sd**2 / 2, atac_depth_sd, size=n_cells))
    atac = sp.csr_matrix(rng.poisson(access[cell_type] * depth[:, None]).astype(np.float32))

    # the BMMC multiome layout
    gex = sp.csr_matrix(rna.layers[LAYER_COUNTS], dtype=np.float32)
    counts = sp.hstack([gex, atac], format="csr", dtype=np.float32)
    X = sp.hstack([_normalise_block(gex), _normalise_block(atac)], format="csr", dtype=np.float32)
    n_peaks = len(names)
    gene_names = genes_table.index.to_numpy().astype(str)
    var = pd.DataFrame({
        "feature_types": pd.Categorical(["GEX"] * n_genes + ["ATAC"] * n_peaks, categories=["ATAC", "GEX"]),
        "gene_id": np.concatenate([genes_table["gene_id"].to_numpy().astype(str), names]),
        VAR_LINKED_GENE: pd.Categorical(np.concatenate([np.full(n_genes, ""), linked_gene])),
        VAR_PEAK_KIND: pd.Categorical(np.concatenate([np.full(n_genes, ""), kind])),
        "accessibility_intercept": np.concatenate([np.full(n_genes, np.nan), a]),
        "accessibility_slope": np.concatenate([np.full(n_genes, np.nan), b]),
    }, index=pd.Index(np.concatenate([gene_names, names])))
    if not var.index.is_unique:
        raise RuntimeError("simulate_multiome: duplicate feature names (a gene symbol equal to a peak name?)")
    site = batch // 3 + 1
    donor = batch + 1
    batch_names = [f"s{b // 3 + 1}d{b + 1}" for b in range(n_batches)]
    obs = pd.DataFrame({
        OBS_CELL_TYPE: pd.Categorical(types[cell_type], categories=sorted(types)),
        OBS_BATCH: pd.Categorical(np.asarray(batch_names)[batch], categories=batch_names),
        "Site": pd.Categorical([f"site{s}" for s in site], categories=[f"site{s}" for s in range(1, site.max() + 1)]),
        "DonorID": (10000 + donor).astype(np.int64),
        "true_library_size": rna.obs["true_library_size"].to_numpy(),
        "true_atac_depth": depth,
    }, index=pd.Index([f"sim{i:05d}-{batch_names[bt]}" for i, bt in enumerate(batch)]))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers[LAYER_COUNTS] = counts
    adata.uns[UNS_SIMULATION] = {
        "simulated": True, "simulator": "cellmamba.datasets.simulate_multiome.simulate_multiome", "seed": int(seed),
        "n_cells": int(n_cells), "n_batches": int(n_batches), "profile_source": source,
        "positions": str(Path(positions) if positions is not None else POSITIONS_FILE),
        "rna": {key: truth[key] for key in ("library_size", "library_sd", "batch_library_sd", "batch_effect_sd",
                                            "dispersion", "composition_alpha", "composition", "batch_library_factor")},
        "gene_batch_factor": np.asarray(rna.varm[VARM_BATCH_FACTOR]).T.copy(),       # (n_batches, n_genes)
        "cell_types": list(types), "genes": list(gene_names),
        "profiles": P,                                                           # (n_types, n_genes)
        "z": z,                                                                  # (n_types, n_genes)
        "atac": {"atac_depth": atac_depth, "atac_depth_sd": atac_depth_sd, "batch_depth_sd": batch_depth_sd,
                 "batch_depth_factor": batch_depth, "peaks_per_gene": list(peaks_per_gene),
                 "n_background_peaks": n_bg, "intercept": list(map(float, intercept)), "slope": list(slope),
                 "background_intercept": list(map(float, background_intercept)),
                 "promoter_jitter": promoter_jitter, "distal_range": list(distal_range),
                 "peak_width": list(peak_width), "z_sd_floor": _Z_SD_FLOOR, "peak_gap": _PEAK_GAP},
        "peaks": {"name": names, "chromosome": chrom, "start": start, "end": end, "linked_gene": linked_gene,
                  "kind": kind, "intercept": a, "slope": b},
        "x_normalisation": "per modality block: log1p(counts / cell total of the block * 1e4), GEX and ATAC alike",
    }
    log.info("simulated multiome: %d cells x %d genes + %d peaks (%d linked, %d background), %d types, %d batches, "
             "seed %d", n_cells, n_genes, n_peaks, n_linked, n_bg, len(types), n_batches, seed)
    return adata


def write_simulated_multiome(path: str | os.PathLike, **kwargs) -> "ad.AnnData":
    """:func:`simulate_multiome` (``**kwargs``) written atomically to ``path`` (.h5ad); returns it."""
    adata = simulate_multiome(**kwargs)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    log.info("wrote %s", path)
    return adata
