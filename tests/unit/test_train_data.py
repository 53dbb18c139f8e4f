"""Training data: dataset items against the tokenizer's own output, the distributed bucketing
sampler (disjoint, complete, deterministic, less padding), the collators' batch contract
(mask counts, zeros only from measured unexpressed genes, labels), determinism, the loader."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellmamba.errors import InputError
from cellmamba.tokenize import (BinnedConfig, PatchConfig, RankConfig, ShardWriter, TokenCorpus, genomic_order,
                                to_patches, tokenize_binned, tokenize_patch, tokenize_rank, write_corpus_manifest)
from cellmamba.train.data import (HIDDEN_VALUE, IGNORE_INDEX, DataConfig, DistributedBucketSampler,
                                  MaskedGeneCollator, MaskedGeneCollateConfig, MaskedValueCollator, MaskedValueCollateConfig,
                                  NextTokenCollator, PatchCollator, TokenDataset, build_dataloader, mask_count)
from cellmamba.vocab import CLS_ID, MASK_ID, N_SPECIAL, PAD_ID

N_GENES = 60
SMALL = 20                 # dataset "B" measured only genes 0..SMALL-1
TOK_MAX = 30               # tokenizer max_len: some cells are stored shortened
SHARDS = {0: ["A", "B"], 1: ["B", "C"]}  # shard-local dataset lists (B is index 1 in one, 0 in the other)
SIZES = {0: 37, 1: 29}


def measured_of(name: str) -> np.ndarray:
    m = np.ones(N_GENES, dtype=bool)
    if name == "B":
        m[SMALL:] = False
    return m


def make_cells(seed: int, n: int, names: list[str]):
    """Counts with varied depth (lengths from ~0 to ~60 genes); B cells only express measured genes."""
    rng = np.random.default_rng(seed)
    ds = rng.integers(0, len(names), n).astype(np.int32)
    density = rng.uniform(0.02, 0.9, n)[:, None]
    dense = (rng.poisson(3.0, (n, N_GENES)) * (rng.random((n, N_GENES)) < density)).astype(np.float32)
    for k, name in enumerate(names):
        dense[np.ix_(ds == k, ~measured_of(name))] = 0
    return dense, ds


def write_shard(path, tokenizer: str, dense: np.ndarray, ds: np.ndarray, names: list[str]):
    X = sp.csr_matrix(dense)
    extra = {}
    if tokenizer == "binned":
        config = BinnedConfig(n_bins=11, max_len=TOK_MAX)
        batch, vdtype = tokenize_binned(X, config), np.uint8
    elif tokenizer == "rank":
        config = RankConfig(max_len=TOK_MAX)
        median = np.linspace(1.0, 3.0, N_GENES) * 1e3
        batch, vdtype = tokenize_rank(X, median, config), None
    else:
        config = PatchConfig(patch_size=8)
        pos = pd.DataFrame({"ensembl_id": [f"G{j}" for j in range(N_GENES)][::-1][:50],
                            "chromosome": ["1"] * 50, "start": np.arange(50)})
        order = genomic_order([f"G{j}" for j in range(N_GENES)], pos)
        batch, vdtype = tokenize_patch(X, order, config), np.float32
        extra["features"] = order.genes
    settings = dataclasses.asdict(config)
    if tokenizer == "patch":
        settings.update(n_features=order.n_features, n_patches=-(-order.n_features // config.patch_size))
    w = ShardWriter(path, values_dtype=vdtype)
    w.append(np.diff(batch.offsets), batch.tokens, batch.values)
    w.finish(dataset=ds, measured=np.stack([measured_of(n) for n in names]), extra_arrays=extra,
             manifest={"tokenizer": tokenizer, "settings": settings, "stats": {}, "vocab_hash": "test",
                       "n_genes": N_GENES, "datasets": names, "source": "test"})
    return batch


def build_corpus(tokenizer, root):
    """(manifest path, tokenizer, per-cell reference list of (tokens, values, dataset name, dense row))."""
    ref, dirs = [], []
    for s, names in SHARDS.items():
        dense, ds = make_cells(10 + s, SIZES[s], names)
        batch = write_shard(root / str(s), tokenizer, dense, ds, names)
        dirs.append(root / str(s))
        for i in range(SIZES[s]):
            tok, val = batch.cell(i)
            ref.append((tok.astype(np.int64), None if val is None else val.copy(), names[ds[i]], dense[i]))
    write_corpus_manifest(dirs, root / "manifest.json")
    return root / "manifest.json", tokenizer, ref


@pytest.fixture(scope="module")
def binned(tmp_path_factory):
    return build_corpus("binned", tmp_path_factory.mktemp("binned"))


@pytest.fixture(scope="module")
def rank(tmp_path_factory):
    return build_corpus("rank", tmp_path_factory.mktemp("rank"))


@pytest.fixture(scope="module")
def patch(tmp_path_factory):
    return build_corpus("patch", tmp_path_factory.mktemp("patch"))


@pytest.fixture(params=["binned", "rank", "patch"])
def corpus(request):
    return request.getfixturevalue(request.param)


# --- dataset -----------------------------------------------------------------------------------
def test_items_equal_tokenizer_output(corpus):
    path, tokenizer, ref = corpus
    ds = TokenDataset(path)
    assert len(ds) == len(ref) == sum(SIZES.values())
    assert ds.datasets == ["A", "B", "C"]  # corpus-wide union, first appearance order
    lengths = ds.lengths
    for g in np.random.default_rng(0).permutation(len(ref)):
        item = ds[g]
        tok, val, name, row = ref[g]
        np.testing.assert_array_equal(item["tokens"], tok)
        assert item["tokens"].dtype == np.int64
        if val is None:
            assert item["values"] is None
        else:
            np.testing.assert_array_equal(item["values"], val)
        assert ds.datasets[item["dataset"]] == name and item["cell_index"] == g
        np.testing.assert_array_equal(item["measured"], measured_of(name))
        if tokenizer == "patch":
            assert item["length"] == lengths[g] == 7 and item["complete"] and item["n_features"] == 50
        else:
            assert item["length"] == lengths[g] == tok.shape[0]
            n_expr = int((row > 0).sum())  # independent: the dense row
            assert item["complete"] == (tok.shape[0] < TOK_MAX)
            if item["complete"]:
                assert tok.shape[0] == n_expr + (tokenizer == "binned")
    if tokenizer != "patch":
        assert (lengths == TOK_MAX).any() and (lengths < TOK_MAX).any()  # the fixture has both kinds
    with pytest.raises(IndexError):
        ds[len(ref)]


def test_crop_head_rank(rank):
    path, _, ref = rank
    ds = TokenDataset(path, max_len=5)
    assert ds.crop == "head"
    for g in range(len(ref)):
        np.testing.assert_array_equal(ds[g]["tokens"], ref[g][0][:5])
        assert ds.lengths[g] == min(5, ref[g][0].shape[0])


def test_crop_sample_binned(binned):
    path, _, ref = binned
    ds = TokenDataset(path, max_len=6, seed=3)
    assert ds.crop == "sample"
    long = [g for g in range(len(ref)) if ref[g][0].shape[0] > 6]
    assert len(long) > 5
    first = {g: ds[g]["tokens"] for g in long}
    for g in long:
        item = ds[g]
        tok, val = ref[g][0], ref[g][1]
        assert item["tokens"][0] == CLS_ID and item["tokens"].shape == (6,) and item["length"] == 6
        pos = np.searchsorted(tok, item["tokens"])  # stored tokens are CLS + ascending genes
        np.testing.assert_array_equal(tok[pos], item["tokens"])
        assert np.all(np.diff(pos) > 0)  # a subsequence, stored order kept
        np.testing.assert_array_equal(item["values"], val[pos])
        np.testing.assert_array_equal(ds[g]["tokens"], first[g])  # same epoch: same subset
    ds.set_epoch(1)
    assert any(not np.array_equal(ds[g]["tokens"], first[g]) for g in long)
    head = TokenDataset(path, max_len=6, crop="head")
    for g in long:
        np.testing.assert_array_equal(head[g]["tokens"], ref[g][0][:6])


def test_dataset_pickles_without_data(binned):
    path, _, ref = binned
    ds = TokenDataset(path, max_len=8)
    _ = ds.lengths
    blob = pickle.dumps(ds)
    assert len(blob) < 4000  # path and settings, not the memory maps
    back = pickle.loads(blob)
    for g in (0, 40, len(ref) - 1):
        np.testing.assert_array_equal(back[g]["tokens"], ds[g]["tokens"])


def test_dataset_bad_arguments(corpus):
    path, tokenizer, _ = corpus
    with pytest.raises(InputError, match="crop must be one of"):
        TokenDataset(path, crop="middle")
    with pytest.raises(InputError, match="max_len"):
        TokenDataset(path, max_len=0)
    if tokenizer == "patch":
        with pytest.raises(InputError, match="patch corpus"):
            TokenDataset(path, max_len=10)


# --- sampler ------------------------------------------------------------------------------------
def rank_batches(lengths, ws, epoch=0, **kw):
    out = []
    for r in range(ws):
        s = DistributedBucketSampler(lengths, rank=r, world_size=ws, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def padded_fraction(batches, lengths):
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - real / total


LENGTHS = np.random.default_rng(5).integers(1, 500, 2003)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_ranks_disjoint_and_cover(drop_last):
    ws, bs, n = 3, 16, LENGTHS.shape[0]
    per_rank = rank_batches(LENGTHS, ws, batch_size=bs, bucket_batches=4, drop_last=drop_last, seed=1)
    flat = [np.concatenate(b) for b in per_rank]
    assert len({f.shape[0] for f in flat}) == 1  # equal shares
    assert len({len(b) for b in per_rank}) == 1  # equal batch counts
    if drop_last:
        assert all(len(x) == bs for b in per_rank for x in b)
        everything = np.concatenate(flat)
        assert np.unique(everything).shape[0] == everything.shape[0] == (n // ws) // bs * bs * ws  # disjoint
    else:
        per = -(-n // ws)
        assert flat[0].shape[0] == per
        assert set(np.concatenate(flat).tolist()) == set(range(n))  # every cell
        assert np.concatenate(flat).shape[0] - n == per * ws - n  # only the wrap-around padding repeats
        for r in range(ws):
            assert np.unique(flat[r]).shape[0] == flat[r].shape[0]


def test_sampler_deterministic_and_epochs():
    kw = dict(batch_size=8, bucket_batches=10, seed=7)
    a = rank_batches(LENGTHS, 2, epoch=3, **kw)
    b = rank_batches(LENGTHS, 2, epoch=3, **kw)
    c = rank_batches(LENGTHS, 2, epoch=4, **kw)
    d = rank_batches(LENGTHS, 2, epoch=3, **{**kw, "seed": 8})
    assert a == b
    assert a[0] != c[0] and a[0] != d[0]
    assert set(map(tuple, a[0])) != set(map(tuple, c[0]))  # other batches, not only another order


def test_sampler_buckets_reduce_padding():
    kw = dict(batch_size=16, seed=0)
    bucketed = rank_batches(LENGTHS, 2, bucket_batches=50, **kw)
    plain = rank_batches(LENGTHS, 2, bucket_batches=0, **kw)
    pb = padded_fraction([np.array(x) for b in bucketed for x in b], LENGTHS)
    pp = padded_fraction([np.array(x) for b in plain for x in b], LENGTHS)
    assert pp > 0.3 and pb < 0.1 * pp, (pb, pp)
    # the batch order stays random: not sorted by length
    means = [LENGTHS[x].mean() for x in bucketed[0]]
    assert not (np.all(np.diff(means) >= 0) or np.all(np.diff(means) <= 0))


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_token_budget(drop_last):
    budget = 2000
    per_rank = rank_batches(LENGTHS, 3, batch_size=64, max_tokens=budget, bucket_batches=20, drop_last=drop_last)
    assert len({len(b) for b in per_rank}) == 1  # equalised batch counts
    for b in per_rank:
        for x in b:
            assert len(x) == 1 or len(x) * LENGTHS[x].max() <= budget
            assert len(x) <= 64
    if drop_last:
        everything = np.concatenate([np.concatenate(b) for b in per_rank])
        assert np.unique(everything).shape[0] == everything.shape[0]
    assert np.mean([len(x) * LENGTHS[x].max() for x in per_rank[0]]) > 0.7 * budget  # batches are filled


def test_sampler_resume_and_errors():
    s = DistributedBucketSampler(LENGTHS, batch_size=8, seed=2)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start_batch=5)
    assert list(s) == full[5:] and len(s) == len(full) - 5
    with pytest.raises(InputError, match="rank 2 must be < world_size 2"):
        DistributedBucketSampler(LENGTHS, rank=2, world_size=2)
    with pytest.raises(InputError, match="batch_size must be an integer >= 1, got 0"):
        DistributedBucketSampler(LENGTHS, batch_size=0)
    with pytest.raises(InputError, match="cannot fill one batch per rank"):
        DistributedBucketSampler(LENGTHS[:10], batch_size=8, world_size=2)
    with pytest.raises(InputError, match="DataConfig: max_tokens must be an integer >= 1, got 0"):
        DataConfig(max_tokens=0)
    with pytest.raises(InputError, match="DataConfig: shuffle must be true or false"):
        DataConfig(shuffle="yes")


# --- collators ----------------------------------------------------------------------------------
def test_mask_count_rule():
    assert [mask_count(n, 0.15) for n in (0, 1, 3, 10, 13, 100)] == [0, 1, 1, 2, 2, 15]
    assert mask_count(10, 0.0) == 0 and mask_count(7, 1.0) == 7 and mask_count(10, 0.25) == 3  # 2.5 -> 3


def test_masked_value_batch(binned):
    path, _, ref = binned
    ds = TokenDataset(path)
    items = [ds[g] for g in range(len(ds))]
    batch = MaskedValueCollator(MaskedValueCollateConfig(mask_ratio=0.3), seed=1)(items)
    assert set(batch) == {"input_ids", "attention_mask", "values", "value_mask", "value_targets", "padded", "dataset",
                          "cell_index"}
    B, L = batch["input_ids"].shape
    assert L == max(r[0].shape[0] for r in ref) and B == len(ref)
    assert batch["input_ids"].dtype == torch.int64 and batch["values"].dtype == torch.int64
    assert batch["attention_mask"].dtype == torch.bool and batch["value_mask"].dtype == torch.bool
    assert batch["value_targets"].dtype == torch.float32 and batch["dataset"].dtype == torch.int64
    ids, vm = batch["input_ids"].numpy(), batch["value_mask"].numpy()
    for b, (tok, val, name, row) in enumerate(ref):
        n = tok.shape[0]
        np.testing.assert_array_equal(ids[b, :n], tok)
        assert (ids[b, n:] == PAD_ID).all() and batch["attention_mask"][b].sum() == n
        assert vm[b].sum() == mask_count(n - 1, 0.3)            # exact count over the genes (not CLS)
        assert not vm[b, 0] and not vm[b, n:].any()            # never CLS, never padding
        true = val.astype(np.int64)
        np.testing.assert_array_equal(batch["value_targets"][b, :n].numpy()[vm[b, :n]], true[vm[b, :n]])
        assert (batch["value_targets"][b].numpy()[~vm[b]] == 0).all()
        assert (batch["values"][b, :n].numpy()[vm[b, :n]] == HIDDEN_VALUE).all()
        np.testing.assert_array_equal(batch["values"][b, :n].numpy()[~vm[b, :n]], true[~vm[b, :n]])
        assert ds.datasets[int(batch["dataset"][b])] == name and batch["cell_index"][b] == b
    assert vm.sum() > 50


@pytest.mark.parametrize("zeros", [dict(zeros_ratio=1.0), dict(n_zeros=25)])
def test_zeros_only_measured_unexpressed(binned, zeros):
    path, _, ref = binned
    ds = TokenDataset(path)
    config = MaskedValueCollateConfig(mask_ratio=0.2, max_len=40, **zeros)
    batch = MaskedValueCollator(config, seed=4)([ds[g] for g in range(len(ds))])
    ids, attn = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    vm, targets = batch["value_mask"].numpy(), batch["value_targets"].numpy()
    unhidden = batch["values"].numpy()
    n_b_with_zeros = 0
    for b, (tok, val, name, row) in enumerate(ref):
        real = ids[b, attn[b]]
        added = np.setdiff1d(real, tok)
        assert np.isin(tok, real).all()  # no expressed gene lost
        genes = added - N_SPECIAL
        assert (genes >= 0).all() and measured_of(name)[genes].all()  # measured only
        assert (row[genes] == 0).all()                                  # unexpressed only (the dense row)
        pos = np.flatnonzero(np.isin(ids[b], added) & attn[b])
        assert (np.where(vm[b, pos], targets[b, pos], unhidden[b, pos]) == 0).all()  # value 0 (hidden or not)
        if tok.shape[0] >= TOK_MAX:  # stored list may be shortened: no zeros
            assert added.size == 0
            continue
        n_expr = tok.shape[0] - 1
        pool = int(measured_of(name).sum()) - n_expr
        want = zeros.get("n_zeros") or int(np.floor(zeros.get("zeros_ratio", 0) * n_expr + 0.5))
        assert added.size == min(want, 40 - tok.shape[0], pool)
        assert np.all(np.diff(real[1:]) > 0) and real[0] == CLS_ID  # "sorted": ascending gene order
        assert vm[b, :attn[b].sum()].sum() == mask_count(real.shape[0] - 1, 0.2)
        n_b_with_zeros += name == "B" and added.size > 0
    assert n_b_with_zeros >= 3  # the small-measured-set case is exercised


def test_zeros_append_order(binned):
    path, _, ref = binned
    ds = TokenDataset(path)
    g = next(g for g, r in enumerate(ref) if 3 < r[0].shape[0] < TOK_MAX)
    batch = MaskedValueCollator(MaskedValueCollateConfig(n_zeros=4, zeros_order="append"), seed=0)([ds[g]])
    n = ref[g][0].shape[0]
    np.testing.assert_array_equal(batch["input_ids"][0, :n].numpy(), ref[g][0])
    assert batch["attention_mask"][0].sum() == n + 4


def test_masked_gene_batch(rank):
    path, _, ref = rank
    ds = TokenDataset(path)
    items = [ds[g] for g in range(len(ds))]
    batch = MaskedGeneCollator(MaskedGeneCollateConfig(mask_ratio=0.25), seed=2)(items)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "target_index", "padded", "dataset", "cell_index"}
    lengths = [tok.shape[0] for tok, *_rest in ref]
    assert batch["padded"] is (min(lengths) < batch["input_ids"].shape[1]) and batch["padded"] is (len(set(lengths)) > 1)
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    # the flat positions of the targets, in the order of a boolean selection of the (B, L) labels
    want = [b * labels.shape[1] + t for b in range(labels.shape[0]) for t in range(labels.shape[1])
            if labels[b, t] != IGNORE_INDEX]
    assert batch["target_index"].tolist() == want
    for b, (tok, *_rest) in enumerate(ref):
        n = tok.shape[0]
        hidden = labels[b] != IGNORE_INDEX
        assert hidden.sum() == mask_count(n, 0.25) and not hidden[n:].any()
        np.testing.assert_array_equal(labels[b, hidden], tok[hidden[:n]])
        assert (ids[b, hidden] == MASK_ID).all()
        np.testing.assert_array_equal(ids[b, :n][~hidden[:n]], tok[~hidden[:n]])
        assert (ids[b, n:] == PAD_ID).all()
    bert = MaskedGeneCollator(MaskedGeneCollateConfig(mask_ratio=0.5, random_ratio=0.25, keep_ratio=0.25),
                              n_genes=N_GENES, seed=2)(items)
    ids, labels = bert["input_ids"].numpy(), bert["labels"].numpy()
    for b, (tok, *_rest) in enumerate(ref):
        hidden = labels[b] != IGNORE_INDEX
        k = int(hidden.sum())
        assert k == mask_count(tok.shape[0], 0.5)
        n_mask = int((ids[b, hidden] == MASK_ID).sum())
        n_rand = min(k, int(np.floor(0.25 * k + 0.5)))
        n_keep = min(k - n_rand, int(np.floor(0.25 * k + 0.5)))
        assert n_mask == k - n_rand - n_keep
        assert (ids[b, hidden] == labels[b, hidden]).sum() >= n_keep
        shown = ids[b, hidden]
        assert (((shown >= N_SPECIAL) & (shown < N_SPECIAL + N_GENES)) | (shown == MASK_ID)).all()
    with pytest.raises(InputError, match="needs n_genes"):
        MaskedGeneCollator(MaskedGeneCollateConfig(random_ratio=0.1))


def test_next_token_batch(rank):
    path, _, ref = rank
    ds = TokenDataset(path, max_len=10)
    batch = NextTokenCollator(pad_to_multiple=8)([ds[g] for g in range(5)])
    assert batch["input_ids"].shape == (5, 16)
    for b in range(5):
        n = min(10, ref[b][0].shape[0])
        np.testing.assert_array_equal(batch["labels"][b, :n].numpy(), ref[b][0][:n])
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all() and (batch["input_ids"][b, n:] == PAD_ID).all()
        assert batch["attention_mask"][b].sum() == n


def test_collators_deterministic(binned):
    path, _, _ = binned
    ds = TokenDataset(path)
    items = [ds[g] for g in range(12)]
    config = MaskedValueCollateConfig(zeros_ratio=0.5)
    a = MaskedValueCollator(config, seed=9)(items)
    b = MaskedValueCollator(config, seed=9)(items)
    assert a.keys() == b.keys() and a["padded"] == b["padded"]
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
    other_rank = MaskedValueCollator(config, seed=9, rank=1)(items)
    assert not torch.equal(a["value_mask"], other_rank["value_mask"])
    assert not torch.equal(a["input_ids"], other_rank["input_ids"])  # other zeros too
    later = MaskedValueCollator(config, seed=9)
    later.set_epoch(1)
    assert not torch.equal(a["value_mask"], later(items)["value_mask"])
    # a cell's masks do not depend on the rest of the batch
    alone = MaskedValueCollator(config, seed=9)([items[5]])
    n = int(alone["attention_mask"].sum())
    assert torch.equal(alone["value_mask"][0, :n], a["value_mask"][5, :n])


def test_value_collator_rejects_rank_items(rank):
    path, _, _ = rank
    with pytest.raises(InputError, match="needs a binned corpus"):
        MaskedValueCollator()([TokenDataset(path)[0]])
    with pytest.raises(InputError, match="mask_ratio must be a number in \\[0, 1\\], got 1.5"):
        MaskedValueCollateConfig(mask_ratio=1.5)
    with pytest.raises(InputError, match="not both"):
        MaskedValueCollateConfig(zeros_ratio=0.5, n_zeros=3)


def test_patch_batch(patch):
    path, _, ref = patch
    ds = TokenDataset(path)
    items = [ds[g] for g in range(6)]
    batch = PatchCollator(patch_size=8)(items)
    assert set(batch) == {"values", "attention_mask", "dataset", "cell_index"}
    assert batch["values"].shape == (6, 7, 8) and batch["values"].dtype == torch.float32
    assert batch["attention_mask"].all()
    for b in range(6):
        want = to_patches(ref[b][0], ref[b][1], n_features=50, patch_size=8)
        np.testing.assert_array_equal(batch["values"][b].numpy(), want)
        assert want.sum() > 0 or ref[b][0].size == 0
    src = next(it for it in (ds[g] for g in range(len(ds))) if (it["tokens"] < 20).sum() >= 2)
    sel = src["tokens"] < 20
    # a cell of another corpus, with 20 features (3 patches)
    short = dict(src, tokens=src["tokens"][sel], values=src["values"][sel], n_features=20)
    mixed = PatchCollator(patch_size=8)([items[0], short])
    assert mixed["values"].shape == (2, 7, 8)
    assert mixed["attention_mask"][1].tolist() == [True] * 3 + [False] * 4
    np.testing.assert_array_equal(mixed["values"][1, :3].numpy(),
                                  to_patches(short["tokens"], short["values"], n_features=20, patch_size=8))
    assert (mixed["values"][1, 3:] == 0).all() and (mixed["values"][1, :3] != 0).sum() == sel.sum()


# --- loader -------------------------------------------------------------------------------------
def test_build_dataloader_ranks_workers_epochs(binned):
    path, _, ref = binned
    config = DataConfig(max_len=12, batch_size=4, bucket_batches=2, seed=5)
    loaders = [build_dataloader(path, MaskedValueCollator(seed=5, rank=r), config, rank=r, world_size=2)
               for r in range(2)]
    epoch0 = [[b for b in loader] for loader in loaders]
    n = len(ref)
    assert len(epoch0[0]) == len(epoch0[1]) == (n // 2) // 4
    cells = [torch.cat([b["cell_index"] for b in e]).tolist() for e in epoch0]
    assert not set(cells[0]) & set(cells[1])
    assert all(b["input_ids"].shape[1] <= 12 for e in epoch0 for b in e)
    again = [b for b in loaders[0]]
    assert all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for x, y in zip(epoch0[0], again) for k in x)
    loaders[0].batch_sampler.set_epoch(1)  # what a loop that only knows the sampler calls
    assert loaders[0].collate_fn.epoch == 1 and loaders[0].dataset.epoch == 1
    epoch1 = [b for b in loaders[0]]
    assert torch.cat([b["cell_index"] for b in epoch1]).tolist() != cells[0]
    workers = build_dataloader(path, MaskedValueCollator(seed=5), dataclasses.replace(config, num_workers=2),
                               rank=0, world_size=2)
    workers.set_epoch(1)
    for x, y in zip(epoch1, workers, strict=True):  # same batches whatever the number of workers
        for k in x:
            assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k], k
    with pytest.raises(InputError, match="built for rank 1"):
        build_dataloader(path, MaskedValueCollator(rank=1), config, rank=0, world_size=2)


def test_build_dataloader_token_budget(binned):
    path, _, _ = binned
    collator = MaskedValueCollator(MaskedValueCollateConfig(n_zeros=10, max_len=32), seed=0)
    loader = build_dataloader(TokenDataset(path), collator, DataConfig(batch_size=16, max_tokens=100, drop_last=False))
    seen = []
    for b in loader:
        assert b["input_ids"].shape[0] == 1 or b["input_ids"].numel() <= 100
        seen += b["cell_index"].tolist()
    assert set(seen) == set(range(len(TokenCorpus(path))))


@pytest.mark.parametrize("recipe, lm, backbone", [("scmamba2", "masked_gene", "bimamba_mamba2"),
                                                 ("genemamba", "next_token", "bimamba_mamba2"),
                                                 ("genemamba", "masked_gene", "transformer")])
def test_packed_batches_give_the_padded_loss_and_gradient(binned, rank, recipe, lm, backbone):
    """pack: true adds the plan to the batch and changes nothing else: the objective's loss and the
    gradient are the padded batch's (reference path; issue 23)."""
    from cellmamba.train.pretrain import PretrainConfig, _collator, _objective, build_pretrain_model

    path = (binned if recipe == "scmamba2" else rank)[0]
    ds = TokenDataset(path)
    items = [ds[g] for g in range(len(ds))]
    cfg = PretrainConfig(recipe=recipe, lm=lm, backbone=backbone, d_model=32, n_layers=2, d_state=8,
                         context_length=64, pathway_weight=0.0, backend="torch")
    losses, grads = [], []
    for pack in (False, True):
        c = dataclasses.replace(cfg, pack=pack)
        batch = _collator(c, n_genes=ds.n_genes, rank=0)(items)
        assert ("packing" in batch) == pack
        if pack:
            assert batch["packing"].lengths.tolist() == batch["attention_mask"].sum(1).tolist()
            assert batch["packing"].n_rows < len(items)
        torch.manual_seed(0)
        model = build_pretrain_model(c, n_genes=ds.n_genes).double()
        loss, _ = _objective(c, vocabulary=None, gene_sets=None)(model, batch)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-9, atol=1e-12)
    for g1, g0 in zip(grads[1], grads[0]):
        assert (g1 is None) == (g0 is None)
        if g1 is not None:
            torch.testing.assert_close(g1, g0, rtol=1e-7, atol=1e-10)


def test_token_budget_passes_hand_computed():
    """Longest first; a pass grows while (cells + 1) x its padded length stays within the budget."""
    from cellmamba.train.data_collate import TokenBudget

    plain = TokenBudget(MaskedGeneCollator(), 20)
    assert plain.passes([10, 3, 8, 2, 5]) == [[0, 2], [4, 1, 3]]  # 2 x 10 = 20; then 3 x 5 = 15
    rounded = TokenBudget(MaskedGeneCollator(pad_to_multiple=4), 20)
    assert rounded.passes([10, 3, 8, 2, 5]) == [[0], [2, 4], [1, 3]]  # 12 alone; 2 x 8 = 16; 2 x 4 = 8
    assert plain.passes([30, 4]) == [[0], [1]]  # a cell over the budget has a pass of its own
    with pytest.raises(InputError, match="max_tokens"):
        TokenBudget(MaskedGeneCollator(), 0)


def test_token_budget_passes_are_the_collators_batches_of_their_cells(rank):
    """Each pass is the wrapped collator's batch of its cells, within the budget, and every cell's
    masks are the ones it gets in the whole batch (per-cell generators)."""
    from cellmamba.train.data_collate import TokenBudget

    path, _, _ = rank
    ds = TokenDataset(path)
    items = [ds[g] for g in range(len(ds))]
    collator = MaskedGeneCollator(MaskedGeneCollateConfig(mask_ratio=0.25), seed=2)
    whole = collator(items)
    longest = max(len(it["tokens"]) for it in items)
    passes = TokenBudget(collator, longest * 2)(items)
    assert len(passes) > 1 and sorted(torch.cat([p["cell_index"] for p in passes]).tolist()) == list(range(len(ds)))
    for p in passes:
        assert p["input_ids"].numel() <= longest * 2 and set(p) == set(whole)
        for b, cell in enumerate(p["cell_index"].tolist()):
            n = int(p["attention_mask"][b].sum())
            row = whole["cell_index"].tolist().index(cell)
            assert torch.equal(p["labels"][b, :n], whole["labels"][row, :n])
            assert torch.equal(p["input_ids"][b, :n], whole["input_ids"][row, :n])
