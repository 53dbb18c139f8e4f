"""numba per-cell kernels over CSR arrays (the hot loops of the three tokenizers).

Why hand-written: no library tokenizes a CSR matrix cell by cell at this speed. scGPT's
``binning`` / ``Preprocessor`` densify every cell, call ``np.quantile`` + two ``np.digitize``
per cell and break ties at random (1,400-1,800 cells/s/core, not reproducible); Geneformer's
tokenizer sorts dense rows in Python (2,600-4,100 cells/s/core); a vectorised numpy version
is only 1.4-2x faster than scGPT (DESIGN.md). These kernels loop over the non-zeros of one
cell at a time, sort float values (never 64-bit packed keys, ~14x slower here), and write
into preallocated flat output arrays.

Common inputs of every kernel, for a chunk of ``n`` cells:

- ``indptr``: int64 (n + 1,), row pointer starting at 0.
- ``genes``: int64 (nnz,), vocabulary gene index of each stored entry, -1 = not in the
  vocabulary (skipped); ascending within a row (the caller guarantees it).
- ``counts``: float32 (nnz,), raw counts (entries equal to 0 are skipped).
- ``totals``: float64 (n,), each cell's total counts (over all its genes, in or out of the
  vocabulary).

Outputs are written to preallocated arrays; ``out_len`` (n,) receives each cell's length.
Tie rules are documented on the public functions (rank.py, binned.py, patch.py); the tests
check the kernels against independent per-cell references.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..vocab import CLS_ID, N_SPECIAL

_CLS = np.uint32(CLS_ID)
_NSPECIAL = np.int64(N_SPECIAL)
_RADIX = 1 << 8  # radix sort digit: 8 bits (measured faster here than 11 bits, 3 passes)


@njit(cache=True, nogil=True, error_model="numpy")
def radix_argsort(keys, m, perm, tmp_keys, tmp_perm, hist):
    """Stable ascending argsort of ``keys[:m]`` (uint32 or uint64) into ``perm[:m]``; LSD radix with
    digits of log2(len(hist)) bits, skipping the passes whose digit is the same in every key.
    ``keys`` is used as scratch (left sorted); ``tmp_*`` are scratch of at least ``m``.
    Why: numba's argsort of ~2,000 floats costs ~150 us a cell (mergesort), this ~20 us."""
    for i in range(m):
        perm[i] = i
    if m < 2:
        return
    k0 = keys[0]
    diff = np.uint64(0)
    for i in range(1, m):
        diff |= keys[i] ^ k0
    radix = hist.shape[0]
    nbits = 0
    while (1 << nbits) < radix:
        nbits += 1
    mask = np.uint64(radix - 1)
    src_k, src_p, dst_k, dst_p = keys, perm, tmp_keys, tmp_perm
    flipped = False
    for p in range((64 + nbits - 1) // nbits):
        shift = np.uint64(nbits * p)
        if (diff >> shift) & mask == 0:
            continue
        hist[:] = 0
        for i in range(m):
            hist[np.int64((src_k[i] >> shift) & mask)] += 1
        acc = 0
        for d in range(radix):
            c = hist[d]
            hist[d] = acc
            acc += c
        for i in range(m):
            d = np.int64((src_k[i] >> shift) & mask)
            j = hist[d]
            hist[d] = j + 1
            dst_k[j] = src_k[i]
            dst_p[j] = src_p[i]
        src_k, src_p, dst_k, dst_p = dst_k, dst_p, src_k, src_p
        flipped = not flipped
    if flipped:  # the result is in tmp_perm / tmp_keys: copy back
        for i in range(m):
            perm[i] = src_p[i]
            keys[i] = src_k[i]


@njit(cache=True, nogil=True, error_model="numpy")
def first_bad_count(data):
    """Index of the first value that is not a finite non-negative integer, or -1."""
    for i in range(data.shape[0]):
        v = data[i]
        if not (v >= 0.0) or v != np.floor(v) or v == np.inf:
            return i
    return -1


@njit(cache=True, nogil=True)
def first_bad_value(data):
    """Index of the first value that is negative, NaN or infinite, or -1."""
    for i in range(data.shape[0]):
        v = data[i]
        if not (v >= 0.0) or v == np.inf:
            return i
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def row_sums(indptr, data):
    """float64 (n,) sums of each CSR row."""
    n = indptr.shape[0] - 1
    out = np.zeros(n, dtype=np.float64)
    for r in range(n):
        s = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            s += data[k]
        out[r] = s
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def scan_chunk(indptr, indices, data, totals):
    """One pass over a chunk: row sums into ``totals`` (float64 (n,)).

    Returns (index of the first value that is not a finite non-negative integer or -1,
    whether the column indices of every row are strictly ascending). After a bad value the
    totals are partial."""
    n = indptr.shape[0] - 1
    ascending = True
    for r in range(n):
        s = 0.0
        last = -1
        for k in range(indptr[r], indptr[r + 1]):
            v = data[k]
            if not (v >= 0.0) or v != np.floor(v) or v == np.inf:
                return k, ascending
            s += v
            if indices[k] <= last:
                ascending = False
            last = indices[k]
        totals[r] = s
    return -1, ascending


@njit(cache=True, nogil=True, error_model="numpy")
def rows_ascending(indptr, genes):
    """True if the non-negative gene ids of every row are strictly ascending."""
    n = indptr.shape[0] - 1
    for r in range(n):
        last = -1
        for k in range(indptr[r], indptr[r + 1]):
            g = genes[k]
            if g < 0:
                continue
            if g <= last:
                return False
            last = g
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def rank_kernel(indptr, genes, counts, totals, inv_median, target_sum, max_len, out_tokens, out_len):
    """Geneformer-style rank value encoding of each cell, top ``max_len`` genes.

    score = float32(count * (target_sum / total) * inv_median[gene]) (float64 products,
    rounded once to float32; ``inv_median`` = 1 / median, multiplications instead of two
    divisions per entry); genes with NaN ``inv_median`` are skipped; order: score
    descending, ties by gene index ascending (a stable sort of the row, which is in
    ascending gene order).
    ``out_tokens``: uint32, at least nnz long.
    Returns the number of non-zero entries skipped for a NaN median.
    """
    n = indptr.shape[0] - 1
    width = 0
    for r in range(n):
        width = max(width, indptr[r + 1] - indptr[r])
    scores = np.empty(width, dtype=np.float32)
    keys = scores.view(np.uint32)  # positive float32: bit order == value order
    cand = np.empty(width, dtype=np.int64)
    perm = np.empty(width, dtype=np.int32)  # 32-bit keys and indices: half the memory traffic
    tmp_keys = np.empty(width, dtype=np.uint32)
    tmp_perm = np.empty(width, dtype=np.int32)
    hist = np.empty(_RADIX, dtype=np.int64)
    pos = 0
    n_nan = 0
    for r in range(n):
        m = 0
        scale = target_sum / totals[r] if totals[r] > 0 else 0.0  # all-zero cell: no entries anyway
        for k in range(indptr[r], indptr[r + 1]):
            g = genes[k]
            c = counts[k]
            if g < 0 or c == 0:
                continue
            w = inv_median[g]
            if np.isnan(w):
                n_nan += 1
                continue
            scores[m] = np.float32(np.float64(c) * scale * w)
            cand[m] = g
            m += 1
        for i in range(m):
            keys[i] = ~keys[i]  # ascending order of ~bits == descending score
        radix_argsort(keys, m, perm, tmp_keys, tmp_perm, hist)  # stable: ties keep gene order
        keep = min(m, max_len)
        for i in range(keep):
            out_tokens[pos + i] = np.uint32(cand[perm[i]] + _NSPECIAL)
        out_len[r] = keep
        pos += keep
    return n_nan


@njit(cache=True, nogil=True, error_model="numpy")
def _quantile_edges(sorted_vals, n, qs, edges):
    """``np.quantile(vals, qs)`` (method "linear") of the first ``n`` sorted float32 values,
    reproducing numpy 2's arithmetic step by step (virtual index (n-1)*q, float32 difference,
    the two-sided lerp), so the edges are bit-identical to numpy's."""
    last = n - 1
    for j in range(qs.shape[0]):
        vi = last * qs[j]
        prev = np.floor(vi)
        gamma = vi - prev
        if vi >= last:
            a = sorted_vals[last]
            b = a
        else:
            i = np.int64(prev)
            a = sorted_vals[i]
            b = sorted_vals[i + 1]
        diff = np.float64(b - a)  # b - a in float32, as numpy does on float32 data
        if gamma >= 0.5:
            edges[j] = np.float64(b) - diff * (1.0 - gamma)
        else:
            edges[j] = np.float64(a) + diff * gamma


@njit(cache=True, nogil=True, error_model="numpy")
def _mix64(z):
    """splitmix64 finaliser (uint64 -> uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True, error_model="numpy")
def sample_key(seed, cell, gene):
    """Deterministic pseudo-random uint64 key of (seed, global cell index, gene index)."""
    return _mix64(_mix64(_mix64(np.uint64(seed)) ^ np.uint64(cell)) ^ np.uint64(gene))


_TABLE = 1 << 16  # integer values below this take the counting path of binned_kernel


@njit(cache=True, nogil=True, error_model="numpy")
def _edge_from_ranks(ra, rb, gamma):
    """numpy's two-sided lerp between float32 values ``ra`` <= ``rb`` (see _quantile_edges)."""
    diff = np.float64(rb - ra)
    if gamma >= 0.5:
        return np.float64(rb) - diff * (1.0 - gamma)
    return np.float64(ra) + diff * gamma


@njit(cache=True, nogil=True, error_model="numpy")
def binned_kernel(indptr, genes, counts, qs, max_len, sample, seed, first_cell,
                  out_tokens, out_values, out_len):
    """CLS + (gene, per-cell quantile bin) of each cell, in ascending gene order.

    Edges: ``np.quantile(nonzero, qs)``; bin of value x: ``(a + b + 1) // 2`` with
    a = #edges < x, b = #edges <= x (the middle of the bins a tie could go to, rounded down;
    = np.digitize's bin when x is on no edge). Cells with more than ``max_len - 1`` expressed
    genes keep ``max_len - 1`` of them: ``sample`` False -> the largest values, ties by gene
    index ascending; True -> the smallest ``sample_key(seed, first_cell + r, gene) >> 32``,
    ties by gene index ascending. ``out_tokens`` uint32 / ``out_values`` uint8, at least
    nnz + n long. Values must be >= 0. Returns the number of cells shortened.

    Raw counts (integers < 2**16) take a counting path: a histogram of the cell's distinct
    values gives the order statistics and a value -> bin table, O(nnz + distinct log
    distinct) instead of sorting the values; other values are sorted (radix).
    """
    n = indptr.shape[0] - 1
    width = 0
    for r in range(n):
        width = max(width, indptr[r + 1] - indptr[r])
    vals = np.empty(width, dtype=np.float32)
    bits = vals.view(np.uint32)  # non-negative float32: bit order == value order
    srt = np.empty(width, dtype=np.float32)
    cand = np.empty(width, dtype=np.int64)
    bins = np.empty(width, dtype=np.uint8)
    keep = np.empty(width, dtype=np.bool_)
    keys = np.empty(width, dtype=np.uint64)
    perm = np.empty(width, dtype=np.int64)
    tmp_keys = np.empty(width, dtype=np.uint64)
    tmp_perm = np.empty(width, dtype=np.int64)
    hist = np.empty(_RADIX, dtype=np.int64)
    count_of = np.zeros(_TABLE, dtype=np.int64)   # counting path: occurrences of each value
    bin_of = np.zeros(_TABLE, dtype=np.uint8)     # counting path: bin of each value
    distinct = np.empty(width, dtype=np.int64)
    cum = np.empty(width, dtype=np.int64)          # cum[j]: values <= distinct[j]
    n_edges = qs.shape[0]
    edges = np.empty(n_edges, dtype=np.float64)
    limit = max_len - 1
    pos = 0
    n_long = 0
    for r in range(n):
        m = 0
        small_int = True
        for k in range(indptr[r], indptr[r + 1]):
            c = counts[k]
            if genes[k] >= 0 and c != 0:
                vals[m] = c
                cand[m] = genes[k]
                m += 1
                if not (c < _TABLE and c == np.floor(c)):
                    small_int = False
        out_tokens[pos] = _CLS
        out_values[pos] = 0
        pos += 1
        if m == 0:
            out_len[r] = 1
            continue
        last = m - 1
        if small_int:
            nd = 0
            for i in range(m):
                v = np.int64(vals[i])
                if count_of[v] == 0:
                    distinct[nd] = v
                    nd += 1
                count_of[v] += 1
            ds = np.sort(distinct[:nd])
            acc = 0
            for j in range(nd):
                acc += count_of[ds[j]]
                cum[j] = acc
            j = 0  # distinct index holding rank i: first j with cum[j] > i (ranks rise with q)
            for e in range(n_edges):
                vi = last * qs[e]
                prev = np.floor(vi)
                gamma = vi - prev
                i = last if vi >= last else np.int64(prev)
                while cum[j] <= i:
                    j += 1
                ra = np.float32(ds[j])
                if vi >= last:
                    rb = ra
                else:
                    rb = np.float32(ds[j + 1]) if cum[j] <= i + 1 else ra
                edges[e] = _edge_from_ranks(ra, rb, gamma)
            a = 0
            b = 0
            for j in range(nd):  # merge walk: distinct values against edges
                x = np.float64(ds[j])
                while a < n_edges and edges[a] < x:
                    a += 1
                while b < n_edges and edges[b] <= x:
                    b += 1
                bin_of[ds[j]] = np.uint8((a + b + 1) // 2)
            for i in range(m):
                bins[i] = bin_of[np.int64(vals[i])]
            t = np.float32(0)
            n_gt = 0
            if m > limit:  # the limit-th largest value t, and how many values exceed it
                jt = 0
                while cum[jt] <= m - limit:
                    jt += 1
                t = np.float32(ds[jt])
                n_gt = m - cum[jt]
            for j in range(nd):
                count_of[ds[j]] = 0
        else:
            for i in range(m):
                keys[i] = np.uint64(bits[i])
            radix_argsort(keys, m, perm, tmp_keys, tmp_perm, hist)
            for i in range(m):
                srt[i] = vals[perm[i]]
            _quantile_edges(srt, m, qs, edges)
            a = 0  # edges < x
            b = 0  # edges <= x
            for i in range(m):  # merge walk: sorted values against sorted edges
                x = np.float64(srt[i])
                while a < n_edges and edges[a] < x:
                    a += 1
                while b < n_edges and edges[b] <= x:
                    b += 1
                bins[perm[i]] = np.uint8((a + b + 1) // 2)
            t = np.float32(0)
            n_gt = 0
            if m > limit:
                t = srt[m - limit]
                for i in range(m - limit, m):
                    if srt[i] > t:
                        n_gt += 1
        if m <= limit:
            for i in range(m):
                out_tokens[pos + i] = np.uint32(cand[i] + _NSPECIAL)
                out_values[pos + i] = bins[i]
            pos += m
            out_len[r] = m + 1
            continue
        n_long += 1
        keep[:m] = False
        if sample:
            for i in range(m):
                keys[i] = sample_key(seed, first_cell + r, cand[i]) >> np.uint64(32)
            radix_argsort(keys, m, perm, tmp_keys, tmp_perm, hist)  # stable: ties by gene
            for i in range(limit):
                keep[perm[i]] = True
        else:
            n_eq = limit - n_gt  # keep values > t, then values == t by ascending gene
            for i in range(m):
                if vals[i] > t:
                    keep[i] = True
                elif vals[i] == t and n_eq > 0:
                    keep[i] = True
                    n_eq -= 1
        w = pos
        for i in range(m):
            if keep[i]:
                out_tokens[w] = np.uint32(cand[i] + _NSPECIAL)
                out_values[w] = bins[i]
                w += 1
        pos += limit
        out_len[r] = limit + 1
    return n_long


@njit(cache=True, nogil=True, error_model="numpy")
def patch_kernel(indptr, genes, counts, totals, position, target_sum, out_tokens, out_values, out_len):
    """(genomic position, float32 log1p(count / total * target_sum)) of each cell's expressed
    genes with a position (``position[gene] >= 0``), in ascending position.
    Returns the number of non-zero entries skipped because their gene has no position."""
    n = indptr.shape[0] - 1
    width = 0
    for r in range(n):
        width = max(width, indptr[r + 1] - indptr[r])
    keys = np.empty(width, dtype=np.uint64)
    vals = np.empty(width, dtype=np.float32)
    perm = np.empty(width, dtype=np.int64)
    tmp_keys = np.empty(width, dtype=np.uint64)
    tmp_perm = np.empty(width, dtype=np.int64)
    hist = np.empty(_RADIX, dtype=np.int64)
    pos = 0
    n_drop = 0
    for r in range(n):
        m = 0
        total = totals[r]
        for k in range(indptr[r], indptr[r + 1]):
            g = genes[k]
            c = counts[k]
            if g < 0 or c == 0:
                continue
            p = position[g]
            if p < 0:
                n_drop += 1
                continue
            keys[m] = np.uint64(p)
            vals[m] = np.float32(np.log1p(np.float64(c) / total * target_sum))
            m += 1
        radix_argsort(keys, m, perm, tmp_keys, tmp_perm, hist)  # positions are distinct
        for i in range(m):
            out_tokens[pos + i] = np.uint32(keys[i])
            out_values[pos + i] = vals[perm[i]]
        out_len[r] = m
        pos += m
    return n_drop
