"""QC shard h5ad -> token shards: round trip against naive references, random access across
shards, checksums, and bad input (clear errors, no partial output)."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.errors import CorruptFileError, InputError
from cellmamba.tokenize import (BinnedConfig, PatchConfig, RankConfig, TokenCorpus, TokenShard, tokenize_h5ad,
                                verify_shard, write_corpus_manifest)
from cellmamba.vocab import CLS_ID, N_SPECIAL, vocab_hash

N_GENES = 50
IDS = [f"ENSG{j:011d}" for j in range(N_GENES)]
UNMEASURED_IN_B = np.arange(40, N_GENES)  # genes dataset "B" did not measure


def make_counts(seed: int, n_cells: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = (rng.geometric(0.5, (n_cells, N_GENES)) * (rng.random((n_cells, N_GENES)) < 0.4)).astype(np.float32)
    dense[1] = 0                          # all-zero cell
    dense[2] = rng.integers(1, 3, N_GENES)  # long cell
    return dense


def write_qc_shard(path, dense: np.ndarray, *, datasets=("A", "B"), obs_key="dataset_id") -> str:
    n = dense.shape[0]
    ds = np.array([datasets[i % len(datasets)] for i in range(n)])
    dense = dense.copy()
    dense[np.ix_(ds == "B", UNMEASURED_IN_B)] = 0
    measured = np.ones((N_GENES, 2), dtype=bool)
    measured[UNMEASURED_IN_B, 1] = False
    adata = ad.AnnData(X=sp.csr_matrix(dense), obs=pd.DataFrame({obs_key: pd.Categorical(ds)}, index=[str(i) for i in range(n)]),
                       var=pd.DataFrame({"feature_id": IDS, "feature_name": [f"G{j}" for j in range(N_GENES)]}, index=IDS))
    adata.varm["measured"] = measured
    adata.uns["cellmamba"] = {"measured_datasets": ["A", "B"]}
    adata.write_h5ad(path)
    return dense


def gene_stats(path, *, ids=IDS, seed=0):
    rng = np.random.default_rng(seed)
    med = rng.choice([1000.0, 2000.0, 4000.0], size=len(ids))
    med[[5, 6]] = np.nan
    pd.DataFrame({"feature_id": ids, "feature_name": [f"G{j}" for j in range(len(ids))], "n_cells_measured": 10,
                  "n_cells_detected": 5, "nonzero_median": med}).to_csv(path, sep="\t", index=False, na_rep="NaN")
    return med


# --- naive references (dense rows, Python sorting), independent of the package ---------------
def rank_ref(row, med, max_len):
    total = float(row.sum())
    scored = sorted((-float(np.float32(float(row[j]) * (1e4 / total) * (1.0 / med[j]))), j)
                    for j in range(len(row)) if row[j] > 0 and not np.isnan(med[j]))
    return [N_SPECIAL + j for _, j in scored[:max_len]], None


def binned_ref(row, n_bins, max_len):
    genes = np.flatnonzero(row)
    if not genes.size:
        return [CLS_ID], [0]
    edges = np.quantile(row[genes], np.linspace(0, 1, n_bins - 1))
    bins = (np.digitize(row[genes], edges, right=True) + np.digitize(row[genes], edges) + 1) // 2
    keep = sorted(sorted(genes.tolist(), key=lambda j: (-row[j], j))[:max_len - 1])
    b = dict(zip(genes.tolist(), bins.tolist()))
    return [CLS_ID] + [N_SPECIAL + j for j in keep], [0] + [b[j] for j in keep]


@pytest.fixture
def two_shards(tmp_path):
    dense = [write_qc_shard(tmp_path / "qc0.h5ad", make_counts(0, 23)),
             write_qc_shard(tmp_path / "qc1.h5ad", make_counts(1, 17))]
    return tmp_path, dense


def assert_no_output(tmp_path, name):
    left = [p.name for p in tmp_path.iterdir() if p.name == name or p.name.startswith(f".{name}.tmp")]
    assert left == [], f"partial output left behind: {left}"


@pytest.mark.parametrize("tokenizer", ["rank", "binned"])
def test_round_trip_and_random_access(two_shards, tokenizer):
    tmp_path, dense = two_shards
    med = gene_stats(tmp_path / "gs.tsv")
    kwargs = {"rank": dict(config=RankConfig(max_len=12), gene_stats=tmp_path / "gs.tsv"),
              "binned": dict(config=BinnedConfig(n_bins=7, max_len=15))}[tokenizer]
    out = tmp_path / "tokens" / tokenizer
    shards = []
    for i in range(2):
        manifest = tokenize_h5ad(tmp_path / f"qc{i}.h5ad", out / str(i), tokenizer=tokenizer, chunk_cells=5, **kwargs)
        assert manifest["n_cells"] == len(dense[i]) and manifest["vocab_hash"] == vocab_hash(IDS)
        assert manifest["datasets"] == ["A", "B"]
        for name, entry in manifest["files"].items():  # the tokenizer records sizes and block digests
            size = (out / str(i) / name).stat().st_size
            assert entry["bytes"] == size and len(entry["block_sha256"]) == -(-size // entry["block_bytes"])
        shards.append(out / str(i))
    write_corpus_manifest(shards, out / "manifest.json")
    corpus = TokenCorpus(out, verify=True)
    rows = np.concatenate(dense)
    assert len(corpus) == len(rows) == 40
    for g in np.random.default_rng(0).permutation(len(rows)):  # random order, across both shards
        cell = corpus[g]
        ref_t, ref_v = rank_ref(rows[g], med, 12) if tokenizer == "rank" else binned_ref(rows[g], 7, 15)
        assert cell.tokens.tolist() == ref_t, f"cell {g}"
        assert (cell.values is None) if ref_v is None else cell.values.tolist() == ref_v
        assert cell.dataset == (g if g < 23 else g - 23) % 2  # fixture: cells alternate A, B
        measured = corpus.measured_genes(g)
        assert measured.shape == (N_GENES,) and measured[UNMEASURED_IN_B].any() == (cell.dataset == 0)
    shard = TokenShard(shards[0])
    assert isinstance(shard.tokens, np.memmap) and shard.tokens.dtype == np.uint32
    assert shard.measured.shape == (2, N_GENES) and shard.offsets.dtype == np.int64
    if tokenizer == "rank":
        assert shard.manifest["stats"]["n_genes_no_median"] == 2 and not (shard.path / "values.npy").exists()


def test_patch_shard(two_shards, repo_root):
    tmp_path, dense = two_shards
    pos = pd.DataFrame({"ensembl_id": IDS[::-1][:45], "chromosome": ["1"] * 20 + ["X"] * 25,
                        "start": np.arange(45) % 7})
    # kinds: genes 0-29 protein-coding, 30-47 lncRNA, 48-49 mitochondrial (named MT-); the placed
    # genes are IDS[5:]: 25 of 30 protein-coding, every lncRNA and MT- gene
    table = pd.DataFrame({"feature_id": IDS, "feature_name": [f"G{j}" for j in range(48)] + ["MT-TF", "MT-ND1"],
                          "feature_version": "1", "feature_length": 100,
                          "feature_type": ["protein_coding"] * 30 + ["lncRNA"] * 18 + ["Mt_tRNA", "Mt_rRNA"]})
    m = tokenize_h5ad(tmp_path / "qc0.h5ad", tmp_path / "p0", tokenizer="patch", positions=pos, gene_table=table,
                      config=PatchConfig(patch_size=16, min_coverage={"protein_coding": 0.8}), chunk_cells=4)
    assert m["settings"]["n_features"] == 45 and m["settings"]["n_patches"] == 3
    assert m["stats"]["n_genes_unplaced"] == 5
    assert m["placement"] == {"protein_coding": {"placed": 25, "total": 30}, "lncRNA": {"placed": 18, "total": 18},
                              "Mt_tRNA": {"placed": 1, "total": 1}, "Mt_rRNA": {"placed": 1, "total": 1},
                              "mitochondrial": {"placed": 2, "total": 2}, "all": {"placed": 45, "total": 50}}
    assert m["settings"]["min_coverage"] == {"protein_coding": 0.8}
    with pytest.raises(InputError, match=r"the position table given: too few genes .*protein_coding 25 of 30 placed "
                                         r"\(83\.3% < 99\.0%\)"):
        tokenize_h5ad(tmp_path / "qc0.h5ad", tmp_path / "p1", tokenizer="patch", positions=pos, gene_table=table)
    with pytest.raises(InputError, match="give gene_table="):
        tokenize_h5ad(tmp_path / "qc0.h5ad", tmp_path / "p1", tokenizer="patch", positions=pos)
    assert not (tmp_path / "p1").exists()
    shard = TokenShard(tmp_path / "p0", verify=True)
    for i, row in enumerate(dense[0]):
        tok, val = shard[i][:2]
        genes = shard.features[tok]
        assert np.all(np.diff(tok.astype(int)) > 0)
        assert sorted(genes.tolist()) == [j for j in np.flatnonzero(row) if j >= 5]
        np.testing.assert_allclose(val, np.log1p(row[genes] / row.sum() * 1e4).astype(np.float32), rtol=1e-6)


def test_corrupted_shard_detected(two_shards):
    tmp_path, _ = two_shards
    tokenize_h5ad(tmp_path / "qc0.h5ad", tmp_path / "s0", tokenizer="binned")
    write_corpus_manifest([tmp_path / "s0"], tmp_path / "corpus.json")
    tokens = tmp_path / "s0" / "tokens.npy"
    raw = bytearray(tokens.read_bytes())
    raw[200] ^= 0x01  # one bit of the data section
    tokens.write_bytes(bytes(raw))
    TokenShard(tmp_path / "s0")  # opening without verify only checks shapes
    with pytest.raises(CorruptFileError, match="tokens.npy.*sha256"):
        TokenShard(tmp_path / "s0", verify=True)
    with pytest.raises(CorruptFileError, match="tokens.npy"):
        TokenCorpus(tmp_path / "corpus.json").verify()
    values = tmp_path / "s0" / "values.npy"
    values.write_bytes(values.read_bytes()[:-10])  # truncated
    with pytest.raises(CorruptFileError, match="values.npy"):
        TokenShard(tmp_path / "s0")
    with pytest.raises(CorruptFileError, match="values.npy"):
        verify_shard(tmp_path / "s0")


def test_vocab_mismatch_across_shards(two_shards):
    tmp_path, _ = two_shards
    tokenize_h5ad(tmp_path / "qc0.h5ad", tmp_path / "s0", tokenizer="binned")
    tokenize_h5ad(tmp_path / "qc1.h5ad", tmp_path / "s1", tokenizer="binned", vocabulary=IDS[::-1])
    with pytest.raises(InputError, match="vocab_hash"):
        write_corpus_manifest([tmp_path / "s0", tmp_path / "s1"], tmp_path / "corpus.json")
    assert not (tmp_path / "corpus.json").exists()


def test_corpus_detects_replaced_shard_manifest(two_shards):
    tmp_path, _ = two_shards
    tokenize_h5ad(tmp_path / "qc0.h5ad", tmp_path / "s0", tokenizer="binned")
    write_corpus_manifest([tmp_path / "s0"], tmp_path / "corpus.json")
    tokenize_h5ad(tmp_path / "qc1.h5ad", tmp_path / "s0", tokenizer="binned")  # replaced afterwards
    with pytest.raises(CorruptFileError, match="manifest.json"):
        TokenCorpus(tmp_path / "corpus.json")


# --- bad input: the message names the file / key / value; nothing is left at the output ---------
def test_non_integer_counts(tmp_path):
    dense = make_counts(0, 8)
    dense[3, 7] = 2.5
    write_qc_shard(tmp_path / "bad.h5ad", dense)
    with pytest.raises(InputError, match=r"bad\.h5ad: X holds 2\.5 at row 3, column 7 \(gene ENSG00000000007\)"):
        tokenize_h5ad(tmp_path / "bad.h5ad", tmp_path / "out", tokenizer="binned", chunk_cells=2)
    assert_no_output(tmp_path, "out")


def test_negative_counts(tmp_path):
    dense = make_counts(0, 8)
    dense[6, 0] = -3
    write_qc_shard(tmp_path / "neg.h5ad", dense)
    with pytest.raises(InputError, match=r"neg\.h5ad: X holds -3\.0 at row 6"):
        tokenize_h5ad(tmp_path / "neg.h5ad", tmp_path / "out", tokenizer="binned", chunk_cells=4)
    assert_no_output(tmp_path, "out")


def test_missing_dataset_id(tmp_path):
    write_qc_shard(tmp_path / "nods.h5ad", make_counts(0, 8), obs_key="batch")
    with pytest.raises(InputError, match=r"nods\.h5ad: obs has no 'dataset_id'"):
        tokenize_h5ad(tmp_path / "nods.h5ad", tmp_path / "out", tokenizer="binned")
    assert_no_output(tmp_path, "out")


def test_no_gene_in_gene_stats_vocabulary(tmp_path):
    write_qc_shard(tmp_path / "qc.h5ad", make_counts(0, 8))
    gene_stats(tmp_path / "other.tsv", ids=[f"ENSMUSG{j:011d}" for j in range(N_GENES)])
    with pytest.raises(InputError, match=r"qc\.h5ad: none of its 50 var genes .*ENSG00000000000.* is in .*other\.tsv"):
        tokenize_h5ad(tmp_path / "qc.h5ad", tmp_path / "out", tokenizer="rank", gene_stats=tmp_path / "other.tsv")
    assert_no_output(tmp_path, "out")


def test_empty_shard(tmp_path):
    write_qc_shard(tmp_path / "empty.h5ad", np.zeros((0, N_GENES), dtype=np.float32))
    with pytest.raises(InputError, match=r"empty\.h5ad: has 0 cells"):
        tokenize_h5ad(tmp_path / "empty.h5ad", tmp_path / "out", tokenizer="binned")
    assert_no_output(tmp_path, "out")


def test_rank_needs_gene_stats_and_matching_config(tmp_path):
    write_qc_shard(tmp_path / "qc.h5ad", make_counts(0, 8))
    with pytest.raises(InputError, match="gene_stats"):
        tokenize_h5ad(tmp_path / "qc.h5ad", tmp_path / "out", tokenizer="rank")
    with pytest.raises(InputError, match="BinnedConfig"):
        tokenize_h5ad(tmp_path / "qc.h5ad", tmp_path / "out", tokenizer="binned", config=RankConfig())
    with pytest.raises(InputError, match="tokenizer must be one of"):
        tokenize_h5ad(tmp_path / "qc.h5ad", tmp_path / "out", tokenizer="bpe")
    assert_no_output(tmp_path, "out")


def test_partial_vocabulary_counts_left_out_genes(tmp_path):
    dense = write_qc_shard(tmp_path / "qc.h5ad", make_counts(0, 8))
    vocab = list(np.random.default_rng(0).permutation(IDS[10:])) + ["ENSG99999999999"]  # other order
    m = tokenize_h5ad(tmp_path / "qc.h5ad", tmp_path / "out", tokenizer="binned", vocabulary=vocab, chunk_cells=3)
    assert m["stats"]["n_genes_not_in_vocab"] == 10 and m["n_genes"] == len(vocab)
    shard = TokenShard(tmp_path / "out")
    assert shard.measured.shape == (2, len(vocab)) and not shard.measured[:, -1].any()
    assert shard.measured[1, vocab.index(IDS[45])] == False and shard.measured[1, vocab.index(IDS[15])]  # noqa: E712
    for i, row in enumerate(dense):
        genes = shard[i].tokens[1:].astype(int) - N_SPECIAL
        assert genes.tolist() == sorted(vocab.index(IDS[j]) for j in np.flatnonzero(row) if j >= 10)
    json.loads((tmp_path / "out" / "manifest.json").read_text())


# --- verification at open: sizes, sampled blocks, the full check in the background ------------
BLOCK = 64  # bytes per digested block in these tests (the default is 1 MiB)


def write_small_shard(path, *, seed=0, n_cells=30, block_bytes=BLOCK):
    """A binned-like shard written directly; returns its tokens as written (the reference)."""
    from cellmamba.tokenize import ShardWriter

    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 15, n_cells)
    tokens = rng.integers(N_SPECIAL, N_SPECIAL + N_GENES, int(lengths.sum())).astype(np.uint32)
    values = rng.integers(1, 51, int(lengths.sum())).astype(np.uint8)
    w = ShardWriter(path, values_dtype=np.uint8, block_bytes=block_bytes)
    w.append(lengths, tokens, values)
    w.finish(dataset=np.zeros(n_cells, np.int32), measured=np.ones((1, N_GENES), bool),
             manifest={"tokenizer": "binned", "settings": {}, "stats": {}, "vocab_hash": vocab_hash(IDS),
                       "n_genes": N_GENES, "datasets": ["A"], "source": "test"})
    return tokens


def flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_manifest_records_size_and_block_digests(tmp_path):
    import hashlib

    tokens = write_small_shard(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (tmp_path / "s" / name).read_bytes()
        assert entry["bytes"] == len(data) and entry["block_bytes"] == BLOCK
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["block_sha256"] == [hashlib.sha256(data[k:k + BLOCK]).hexdigest()[:16]
                                         for k in range(0, len(data), BLOCK)]
    assert manifest["files"]["tokens.npy"]["bytes"] == 128 + 4 * len(tokens)  # header + uint32 data
    assert len(manifest["files"]["tokens.npy"]["block_sha256"]) > 10  # several blocks: sampling applies


@pytest.mark.parametrize("mode", ["sample", "full"])
def test_intact_shard_passes_both_checks(tmp_path, mode):
    tokens = write_small_shard(tmp_path / "s")
    write_corpus_manifest([tmp_path / "s"], tmp_path / "corpus.json")
    corpus = TokenCorpus(tmp_path / "corpus.json", verify=mode)
    assert np.array_equal(np.concatenate([corpus[i].tokens for i in range(len(corpus))]), tokens)
    assert verify_shard(tmp_path / "s", mode=mode)["n_cells"] == 30


def test_changed_byte_is_named_with_expected_and_found_digest(tmp_path, monkeypatch):
    import hashlib

    from cellmamba.tokenize import shards

    write_small_shard(tmp_path / "s")
    write_corpus_manifest([tmp_path / "s"], tmp_path / "corpus.json")
    f = tmp_path / "s" / "tokens.npy"
    recorded = json.loads((tmp_path / "s" / "manifest.json").read_text())["files"]["tokens.npy"]
    n_blocks = len(recorded["block_sha256"])
    middle = n_blocks // 2
    flip(f, middle * BLOCK + 3)
    found = hashlib.sha256(f.read_bytes()).hexdigest()
    # full check: the file, the digest it has and the one recorded
    with pytest.raises(CorruptFileError, match=rf"tokens\.npy: sha256 {found}, .*manifest\.json records "
                                               rf"{recorded['sha256']}"):
        TokenCorpus(tmp_path / "corpus.json", verify="full")
    # sampled check, the damaged block drawn (every block sampled): block and byte range named
    monkeypatch.setattr(shards, "SAMPLED_BLOCKS", n_blocks)
    block_found = hashlib.sha256(f.read_bytes()[middle * BLOCK:(middle + 1) * BLOCK]).hexdigest()[:16]
    with pytest.raises(CorruptFileError, match=rf"tokens\.npy: block {middle} \(bytes {middle * BLOCK}-"
                                               rf"{(middle + 1) * BLOCK - 1}\) has sha256 {block_found}\.\.\., .*records "
                                               rf"{recorded['block_sha256'][middle]}"):
        TokenShard(tmp_path / "s", verify="sample")
    # not drawn (first and last block only): the sampled check misses it, the full one does not
    monkeypatch.setattr(shards, "SAMPLED_BLOCKS", 0)
    TokenShard(tmp_path / "s", verify="sample")
    with pytest.raises(CorruptFileError, match=r"tokens\.npy"):
        TokenShard(tmp_path / "s").verify()
    # the first and last blocks are always read: a change there is caught by every sampled check
    flip(f, middle * BLOCK + 3)  # undo
    flip(f, f.stat().st_size - 1)
    with pytest.raises(CorruptFileError, match=rf"tokens\.npy: block {n_blocks - 1} "):
        TokenCorpus(tmp_path / "corpus.json", verify="sample")


@pytest.mark.parametrize("change", ["truncated", "extended"])
def test_wrong_size_is_named_with_expected_and_found_size(tmp_path, monkeypatch, change):
    from cellmamba.tokenize import shards

    monkeypatch.setattr(shards, "SAMPLED_BLOCKS", 0)
    write_small_shard(tmp_path / "s")
    f = tmp_path / "s" / "values.npy"
    size = f.stat().st_size
    data = f.read_bytes()
    f.write_bytes(data[:-10] if change == "truncated" else data + b"\0" * 10)
    new = size - 10 if change == "truncated" else size + 10
    what = "truncated" if change == "truncated" else "longer than written"
    for mode in ("sample", "full"):
        with pytest.raises(CorruptFileError, match=rf"values\.npy: {new} bytes, .*manifest\.json records {size} "
                                                   rf"\({what}\)"):
            TokenShard(tmp_path / "s", verify=mode)
    f.unlink()
    with pytest.raises(CorruptFileError, match=r"values\.npy: missing"):
        TokenShard(tmp_path / "s", verify="sample")


def test_old_manifest_without_block_digests_gets_the_full_check(tmp_path, monkeypatch, caplog):
    """Manifests written before sizes and block digests: still read; "sample" hashes whole files."""
    import logging

    from cellmamba.tokenize import shards

    monkeypatch.setattr(shards, "SAMPLED_BLOCKS", 0)
    monkeypatch.setattr(shards, "_NOTED_OLD", set())
    tokens = write_small_shard(tmp_path / "s")
    mpath = tmp_path / "s" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    for entry in manifest["files"].values():
        for key in ("bytes", "block_bytes", "block_sha256"):
            entry.pop(key)
    mpath.write_text(json.dumps(manifest, indent=1))
    write_corpus_manifest([tmp_path / "s"], tmp_path / "corpus.json")
    with caplog.at_level(logging.INFO, logger="cellmamba.tokenize.shards"):
        corpus = TokenCorpus(tmp_path / "corpus.json", verify="sample")
    assert np.array_equal(np.concatenate([corpus[i].tokens for i in range(len(corpus))]), tokens)
    assert "written before block digests" in caplog.text
    n_blocks = -(-(128 + 4 * len(tokens)) // BLOCK)
    flip(tmp_path / "s" / "tokens.npy", (n_blocks // 2) * BLOCK)  # a block sampling would not draw
    with pytest.raises(CorruptFileError, match=r"tokens\.npy: sha256 .*records"):
        TokenCorpus(tmp_path / "corpus.json", verify="sample")


def test_background_check_finds_damage_in_its_share_of_shards(tmp_path):
    from cellmamba.tokenize import ShardVerifier

    for i in range(3):
        write_small_shard(tmp_path / str(i), seed=i)
    write_corpus_manifest([tmp_path / str(i) for i in range(3)], tmp_path / "corpus.json")
    corpus = TokenCorpus(tmp_path / "corpus.json", verify="sample")
    ok = corpus.verify_in_background()
    ok.check(wait=True)
    assert ok.n_verified == 3
    flip(tmp_path / "1" / "tokens.npy", 500)
    shares = [corpus.verify_in_background(rank=r, world_size=2) for r in range(2)]
    assert [[p.name for p in v.shard_dirs] for v in shares] == [["0", "2"], ["1"]]
    shares[0].check(wait=True)  # shards 0 and 2 are intact
    with pytest.raises(CorruptFileError, match=r"1/tokens\.npy: sha256"):
        shares[1].check(wait=True)
    assert shares[1].n_verified == 0
    with pytest.raises(CorruptFileError, match=r"1/tokens\.npy"):
        ShardVerifier([tmp_path / "1"]).start().check(wait=True)
