"""The embedding API and CLI: ``cellmamba.embed`` against a per-cell forward pass with pooling
by hand and against ``embed_cells`` on independently computed tokens; the gene mapping by hand;
x_kind inference; clear errors; ``python -m cellmamba info | embed | tokenize`` as subprocesses;
``run_pretraining`` writing ``model/vocabulary.tsv``."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellmamba
from cellmamba.embedding import VOCABULARY_NAME
from cellmamba.errors import InputError
from cellmamba.models import BackboneConfig, CellModel, CellModelConfig, EmbeddingConfig, HeadConfig
from cellmamba.tasks.finetune import collator_for, embed_cells
from cellmamba.tasks.tokens import TokenCells, tokenize_dataset
from cellmamba.vocab import CLS_ID, N_SPECIAL, vocab_hash

N_VOCAB = 40        # vocabulary genes
N_SHARED = 30       # of which the dataset measures these
N_UNKNOWN = 5       # dataset genes outside the vocabulary
N_CELLS = 12
CONTEXT = 64        # the toy runs' training context (pretrain_config.json)
SRC = str(Path(cellmamba.__file__).resolve().parents[1])

BACKBONES = {
    "mamba": BackboneConfig(arch="bimamba_mamba2", d_model=16, n_layers=1, d_state=8, headdim=8, chunk_size=8,
                            backend="torch"),
    "transformer": BackboneConfig(arch="transformer", d_model=16, n_layers=1, n_heads=2, mlp_ratio=2.0),
}
KINDS = {"scmamba2": ("binned", "mamba"), "genemamba": ("rank", "mamba"),
         "scmamba2_transformer": ("binned", "transformer")}


def vocabulary_table() -> pd.DataFrame:
    return pd.DataFrame({"feature_id": [f"ENSG{j:011d}" for j in range(N_VOCAB)],
                         "feature_name": [f"GENE{j}" for j in range(N_VOCAB)],
                         "nonzero_median": np.linspace(1.0, 4.0, N_VOCAB)})


def make_adata(seed: int = 0) -> ad.AnnData:
    """Counts over N_SHARED vocabulary genes (shuffled order, Ensembl ids) + N_UNKNOWN unknown genes."""
    rng = np.random.default_rng(seed)
    genes = rng.permutation(N_VOCAB)[:N_SHARED]
    ids = [f"ENSG{j:011d}" for j in genes] + [f"ENSG9{j:010d}" for j in range(N_UNKNOWN)]
    X = rng.poisson(2.0, (N_CELLS, len(ids))) * (rng.random((N_CELLS, len(ids))) < 0.6)
    X[0, :] = 0
    X[0, :3] = [5, 1, 2]  # a short cell
    var = pd.DataFrame(index=ids)
    return ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), var=var,
                      obs=pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)]))


def ref_tokens(adata, kind: str, max_len: int):
    """tokenize_dataset on a copy that says X holds counts (the reference path needs x_kind)."""
    adata = adata.copy()
    adata.uns["cellmamba"] = {"x_kind": "counts"}
    return tokenize_dataset(adata, vocabulary_table(), tokenizer=kind, max_len=max_len)


def build_model(name: str, seed: int = 0) -> CellModel:
    kind, backbone = KINDS[name]
    torch.manual_seed(seed)
    heads = {"value": HeadConfig(kind="value_regression")} if kind == "binned" else {
        "gene": HeadConfig(kind="token_classification", n_out=N_SPECIAL + N_VOCAB)}
    return CellModel(CellModelConfig(embedding=EmbeddingConfig(kind=kind, vocab_size=N_SPECIAL + N_VOCAB),
                                     backbone=BACKBONES[backbone], heads=heads)).eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """name -> model directory (with vocabulary.tsv and a pretrain_config.json beside it)."""
    root = tmp_path_factory.mktemp("runs")
    table = vocabulary_table()
    out = {}
    for name in KINDS:
        model_dir = build_model(name).save_pretrained(root / name / "model")
        table.to_csv(model_dir / VOCABULARY_NAME, sep="\t", index=False)
        (root / name / "pretrain_config.json").write_text(json.dumps({"config": {"context_length": CONTEXT}}))
        out[name] = model_dir
    table.to_csv(root / "gene_stats.tsv", sep="\t", index=False)
    out["gene_stats"] = root / "gene_stats.tsv"
    return out


def naive_embedding(model: CellModel, tokens, pooling: str) -> np.ndarray:
    """One cell at a time, no padding, pooling written out by hand."""
    rows = []
    with torch.no_grad():
        for i in range(len(tokens.batch)):
            tok, val = tokens.batch.cell(i)
            ids = torch.as_tensor(tok.astype(np.int64))[None]
            values = None if val is None else torch.as_tensor(val.astype(np.int64))[None]
            out = model(ids, values)
            hidden = out.hidden[0]
            if pooling == "cls" and out.reverse is not None:  # BiMamba merged at the end: each direction's end
                rows.append(model.backbone.merge(out.forward[0, -1], out.reverse[0, 0]))
            else:
                rows.append(hidden[0] if pooling == "cls" else hidden.mean(0))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("name", list(KINDS))
def test_embed_matches_per_cell_forward_and_embed_cells(runs, name):
    adata = make_adata()
    emb = cellmamba.embed(adata, runs[name], batch_size=5, progress=False)
    key = f"X_cellmamba_{name}"
    assert emb.dtype == np.float32 and emb.shape == (N_CELLS, 16)
    assert np.array_equal(adata.obsm[key], emb) and np.isfinite(emb).all()
    assert np.array_equal(cellmamba.embed(adata, runs[name], batch_size=5, progress=False), emb)  # deterministic
    np.testing.assert_allclose(cellmamba.embed(adata, runs[name], batch_size=3, progress=False), emb,
                               rtol=1e-5, atol=1e-5)  # other batches pad cells differently: same result
    assert emb.std(0).mean() > 0

    kind = KINDS[name][0]
    pooling = "cls" if kind == "binned" else "mean"
    record = adata.uns["cellmamba"]["embeddings"][key]
    assert record["pooling"] == pooling and record["n_genes_used"] == N_SHARED
    assert record["n_genes_unmapped"] == N_UNKNOWN and record["x_kind"] == "counts"
    model = CellModel.from_pretrained(runs[name])
    tokens = ref_tokens(adata, kind, CONTEXT)
    lengths = np.diff(tokens.batch.offsets)
    assert record["max_len"] == lengths.max() < CONTEXT  # never longer than the longest cell
    # the gene mapping by hand: each cell's tokens are its expressed vocabulary genes
    X = adata.X.toarray()
    vocab_pos = {f"ENSG{j:011d}": j for j in range(N_VOCAB)}
    for i in range(N_CELLS):
        tok, _ = tokens.batch.cell(i)
        expressed = {vocab_pos[g] + N_SPECIAL for g, x in zip(adata.var_names, X[i]) if x > 0 and g in vocab_pos}
        genes = tok[1:] if kind == "binned" else tok
        assert set(genes.tolist()) == expressed and len(genes) == len(expressed)
        if kind == "binned":
            assert tok[0] == CLS_ID
    ref, _ = embed_cells(model, TokenCells(tokens), collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=1),
                         pooling=pooling, batch_size=N_CELLS, progress=False)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb, naive_embedding(model, tokens, pooling), rtol=1e-4, atol=1e-5)


def test_embed_key_pooling_max_len_and_vocabulary_argument(runs, tmp_path):
    adata = make_adata()
    ckpt = tmp_path / "model"
    ckpt.mkdir()
    for f in ("config.json", "model.safetensors"):
        (ckpt / f).write_bytes((runs["scmamba2"] / f).read_bytes())
    with pytest.raises(InputError, match=r"vocabulary= .*gene_stats"):
        cellmamba.embed(adata, ckpt, progress=False)
    emb = cellmamba.embed(adata, ckpt, vocabulary=runs["gene_stats"], key="X_mine", pooling="mean", max_len=4,
                          progress=False)
    assert "X_mine" in adata.obsm and adata.uns["cellmamba"]["embeddings"]["X_mine"]["max_len"] == 4
    model = CellModel.from_pretrained(ckpt)
    tokens = ref_tokens(adata, "binned", 4)
    assert np.diff(tokens.batch.offsets).max() == 4  # long cells were cut to 3 genes + CLS
    np.testing.assert_allclose(emb, naive_embedding(model, tokens, "mean"), rtol=1e-4, atol=1e-5)
    # neither inference.json nor a pretrain_config.json beside it: the context is not guessed
    with pytest.raises(InputError, match=r"context_length.*inference\.json.*pretrain_config\.json.*max_len="):
        cellmamba.embed(adata, ckpt, vocabulary=runs["gene_stats"], progress=False)


def test_x_kind_inferred_or_asked_for(runs):
    counts = make_adata()
    lognorm = counts.copy()
    X = counts.X.toarray()
    lognorm.X = sp.csr_matrix(np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4))
    with pytest.raises(InputError, match=r"x_kind.*log1p_norm"):
        cellmamba.embed(lognorm, runs["genemamba"], progress=False)
    lognorm.uns["cellmamba"] = {"x_kind": "log1p_norm"}
    emb = cellmamba.embed(lognorm, runs["genemamba"], progress=False)
    rec = lognorm.uns["cellmamba"]["embeddings"]["X_cellmamba_genemamba"]
    assert rec["x_kind"] == "log1p_norm" and rec["value_source"] == "expm1(log1p_norm)"
    # rank tokens from expm1(log-normalised) equal those from counts (same count / total x 1e4 order)
    ref = cellmamba.embed(counts, runs["genemamba"], progress=False)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-5)
    assert "x_kind" not in counts.uns["cellmamba"]  # inferred, not written into the caller's object


def test_embed_bins_new_data_as_the_model_does(runs, tmp_path):
    """A binned model trained with 11 bins: its embedding reads 11-bin tokens of the new data."""
    torch.manual_seed(3)
    model = CellModel(CellModelConfig(embedding=EmbeddingConfig(kind="binned", vocab_size=N_SPECIAL + N_VOCAB,
                                                                n_bins=11),
                                      backbone=BACKBONES["mamba"],
                                      heads={"value": HeadConfig(kind="value_regression")})).eval()
    model_dir = model.save_pretrained(tmp_path / "bins11")
    vocabulary_table().to_csv(model_dir / VOCABULARY_NAME, sep="\t", index=False)
    adata = make_adata()
    emb = cellmamba.embed(adata, model_dir, max_len=CONTEXT, batch_size=4, progress=False)
    data = adata.copy()
    data.uns["cellmamba"] = {"x_kind": "counts"}
    tokens = tokenize_dataset(data, vocabulary_table(), tokenizer="binned", max_len=CONTEXT, n_bins=11)
    assert tokens.batch.values.max() == 10
    np.testing.assert_allclose(emb, naive_embedding(model, tokens, "cls"), rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_clear_errors(runs, tmp_path):
    adata = make_adata()
    with pytest.raises(InputError, match="pooling"):
        cellmamba.embed(adata, runs["scmamba2"], pooling="max", progress=False)
    short = vocabulary_table().iloc[:-1]
    short.to_csv(tmp_path / "short.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"39 genes.*40 gene tokens"):
        cellmamba.embed(adata, runs["scmamba2"], vocabulary=tmp_path / "short.tsv", progress=False)
    unknown = adata[:, adata.var_names.str.startswith("ENSG9")].copy()
    with pytest.raises(InputError, match="none of its"):
        cellmamba.embed(unknown, runs["scmamba2"], progress=False)
    patch = CellModel(CellModelConfig(embedding=EmbeddingConfig(kind="patch", patch_size=4, max_patches=8),
                                      backbone=BACKBONES["transformer"]))
    patch.save_pretrained(tmp_path / "patch")
    with pytest.raises(InputError, match="patch"):
        cellmamba.embed(adata, tmp_path / "patch", progress=False)


def cli(*args, cwd=None):
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cellmamba", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_cli_info_embed_tokenize(runs, tmp_path):
    ckpt = runs["scmamba2"]
    proc = cli("info", "--json", ckpt)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    model = CellModel.from_pretrained(ckpt)
    assert info["n_parameters"] == sum(v.numel() for v in model.state_dict().values())
    assert info["n_parameters_backbone"] == sum(p.numel() for p in model.backbone.state_dict().values())
    assert (info["recipe"], info["tokenizer"], info["arch"], info["d_model"], info["n_layers"], info["d_state"]) == (
        "scmamba2", "binned", "bimamba_mamba2", 16, 1, 8)
    assert info["n_genes"] == N_VOCAB and info["vocabulary_tsv"] is True and info["context_length"] == CONTEXT
    assert info["heads"] == {"value": "value_regression"}
    proc = cli("info", runs["scmamba2_transformer"])
    assert proc.returncode == 0 and "transformer" in proc.stdout and "scmamba2_transformer" in proc.stdout

    adata = make_adata()
    adata.write_h5ad(tmp_path / "in.h5ad")
    proc = cli("embed", "--checkpoint", ckpt, "--batch-size", 4, "--device", "cpu", tmp_path / "in.h5ad",
               tmp_path / "out.h5ad")
    assert proc.returncode == 0, proc.stderr
    assert "X_cellmamba_scmamba2" in proc.stdout and len(proc.stdout.strip().splitlines()) == 1
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    expected = cellmamba.embed(adata, ckpt, progress=False)
    np.testing.assert_allclose(out.obsm["X_cellmamba_scmamba2"], expected, rtol=1e-5, atol=1e-6)
    assert out.uns["cellmamba"]["embeddings"]["X_cellmamba_scmamba2"]["n_genes_used"] == N_SHARED

    proc = cli("tokenize", "--checkpoint", ckpt, "--max-len", 8, tmp_path / "in.h5ad", tmp_path / "tok.npz")
    assert proc.returncode == 0, proc.stderr
    npz = np.load(tmp_path / "tok.npz")
    ref = ref_tokens(adata, "binned", 8)
    assert np.array_equal(npz["offsets"], ref.batch.offsets) and np.array_equal(npz["tokens"], ref.batch.tokens)
    assert np.array_equal(npz["values"], ref.batch.values) and list(npz["obs_names"]) == list(adata.obs_names)
    assert str(npz["tokenizer"]) == "binned" and int(npz["max_len"]) == 8 and int(npz["n_genes_unmapped"]) == N_UNKNOWN


def test_cli_errors_are_one_line_exit_2(runs, tmp_path):
    for args in (("embed", "--checkpoint", runs["scmamba2"], tmp_path / "missing.h5ad", tmp_path / "o.h5ad"),
                 ("info", tmp_path),
                 ("tokenize", "--checkpoint", runs["scmamba2"], "--vocabulary", tmp_path / "nope.tsv",
                  tmp_path / "missing.h5ad", tmp_path / "t.npz")):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cellmamba: error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.h5ad").exists() and not (tmp_path / "t.npz").exists()


# --- run_pretraining writes model/vocabulary.tsv -------------------------------------------------
def tiny_binned_corpus(root: Path, feature_ids) -> Path:
    from cellmamba.tokenize import BinnedConfig, ShardWriter, tokenize_binned, write_corpus_manifest

    rng = np.random.default_rng(3)
    X = sp.csr_matrix((rng.poisson(2.0, (16, N_VOCAB)) * (rng.random((16, N_VOCAB)) < 0.5)).astype(np.float32))
    config = BinnedConfig(max_len=16)
    batch = tokenize_binned(X, config)
    w = ShardWriter(root / "0", values_dtype=np.uint8)
    w.append(np.diff(batch.offsets), batch.tokens, batch.values)
    w.finish(dataset=np.zeros(16, np.int32), measured=np.ones((1, N_VOCAB), bool),
             manifest={"tokenizer": "binned", "settings": dataclasses.asdict(config), "stats": {},
                       "vocab_hash": vocab_hash(feature_ids), "n_genes": N_VOCAB, "datasets": ["A"], "source": "test"})
    write_corpus_manifest([root / "0"], root / "manifest.json")
    return root / "manifest.json"


def test_run_pretraining_writes_the_vocabulary(runs, tmp_path):
    from cellmamba.train.pretrain import PretrainConfig, run_pretraining

    table = vocabulary_table()
    corpus = tiny_binned_corpus(tmp_path / "corpus", table["feature_id"])
    config = PretrainConfig(recipe="scmamba2", backbone="bimamba_mamba1", d_model=8, n_layers=1, d_state=4,
                            context_length=16, batch_size=4, max_steps=2, warmup_steps=0, checkpoint_every=2,
                            log_every=1, backend="torch")
    other = table.copy()
    other.loc[0, "feature_id"] = "ENSG99999999999"
    other.to_csv(tmp_path / "other.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="vocab_hash"):
        run_pretraining(corpus, tmp_path / "bad", config=config, gene_stats=tmp_path / "other.tsv", device="cpu")
    run_pretraining(corpus, tmp_path / "run", config=config, gene_stats=runs["gene_stats"], device="cpu")
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / VOCABULARY_NAME).read_bytes() == runs["gene_stats"].read_bytes()
    assert not list(model_dir.parent.glob(".*tmp*")) and not list(model_dir.glob(".*tmp*"))
    # the model directory alone is enough to embed new data (context read from pretrain_config.json)
    adata = make_adata()
    emb = cellmamba.embed(adata, model_dir, progress=False)
    assert emb.shape == (N_CELLS, 8) and np.isfinite(emb).all()
    assert adata.uns["cellmamba"]["embeddings"]["X_cellmamba_scmamba2"]["max_len"] <= 16


# --- model directories are self-contained (inference.json) ------------------------------------
SHORT_CONTEXT = 8  # shorter than most cells of make_adata: the context changes the tokens


@pytest.fixture(scope="module")
def trained(runs, tmp_path_factory) -> Path:
    """A run_pretraining output directory whose training context (8) cuts most cells."""
    from cellmamba.train.pretrain import PretrainConfig, run_pretraining

    root = tmp_path_factory.mktemp("trained")
    corpus = tiny_binned_corpus(root / "corpus", vocabulary_table()["feature_id"])
    config = PretrainConfig(recipe="scmamba2", backbone="bimamba_mamba1", d_model=8, n_layers=1, d_state=4,
                            context_length=SHORT_CONTEXT, batch_size=4, max_steps=2, warmup_steps=0,
                            checkpoint_every=2, log_every=1, backend="torch")
    run_pretraining(corpus, root / "run", config=config, gene_stats=runs["gene_stats"], device="cpu")
    return root / "run"


def copy_model(model_dir: Path, dest: Path, *, drop=()) -> Path:
    dest.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name not in drop:
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_a_copied_model_directory_embeds_as_the_original(trained, tmp_path):
    """Before: the copy (no ../pretrain_config.json) embedded with 2,048 tokens per cell instead
    of the training context, silently. Now the context travels in model/inference.json."""
    settings = json.loads((trained / "model" / "inference.json").read_text())
    assert settings["context_length"] == SHORT_CONTEXT and settings["tokenizer"] == "binned"
    assert settings["pooling"] == "cls" and settings["tokenizer_settings"]["n_bins"] == 51
    assert settings["tokenizer_settings"]["max_len"] == 16 and settings["n_genes"] == N_VOCAB
    copy = copy_model(trained / "model", tmp_path / "elsewhere" / "model")
    assert not (copy.parent / "pretrain_config.json").exists()
    adata = make_adata()
    original = cellmamba.embed(adata, trained / "model", progress=False)
    rec = dict(adata.uns["cellmamba"]["embeddings"]["X_cellmamba_scmamba2"])
    copied = cellmamba.embed(adata, copy, progress=False)
    assert np.array_equal(copied, original)
    rec_copy = adata.uns["cellmamba"]["embeddings"]["X_cellmamba_scmamba2"]
    assert rec["max_len"] == rec_copy["max_len"] == SHORT_CONTEXT
    assert rec_copy["max_len_from"] == str(copy / "inference.json")
    # independent reference: the per-cell forward pass on tokens cut to the training context,
    # which differ from those of the 2,048 default the copy used to get
    model = CellModel.from_pretrained(copy).eval()
    tokens = ref_tokens(adata, "binned", SHORT_CONTEXT)
    assert np.diff(ref_tokens(adata, "binned", 2048).batch.offsets).max() > SHORT_CONTEXT
    np.testing.assert_allclose(copied, naive_embedding(model, tokens, "cls"), rtol=1e-4, atol=1e-5)
    # through the CLI too, and `info` reads the context from the copy
    adata.write_h5ad(tmp_path / "in.h5ad")
    proc = cli("embed", "--checkpoint", copy, "--device", "cpu", tmp_path / "in.h5ad", tmp_path / "out.h5ad")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "out.h5ad").obsm["X_cellmamba_scmamba2"], original,
                               rtol=0, atol=1e-6)
    info = cellmamba.embedding.checkpoint_info(copy)
    assert info["context_length"] == SHORT_CONTEXT and info["context_length_from"] == str(copy / "inference.json")


def test_a_model_directory_saved_before_inference_json(trained, tmp_path, caplog):
    """Old directories (no inference.json): the run's ../pretrain_config.json, with a note in the
    log; without it either, a clear error naming both places (never a silent 2,048)."""
    import logging

    adata = make_adata()
    original = cellmamba.embed(adata, trained / "model", progress=False)
    old = copy_model(trained / "model", tmp_path / "run" / "model", drop=("inference.json",))
    (tmp_path / "run" / "pretrain_config.json").write_bytes((trained / "pretrain_config.json").read_bytes())
    with caplog.at_level(logging.INFO, logger="cellmamba.embedding"):
        emb = cellmamba.embed(adata, old, progress=False)
    assert np.array_equal(emb, original)
    assert f"context_length {SHORT_CONTEXT} read from {tmp_path / 'run' / 'pretrain_config.json'}" in caplog.text
    assert adata.uns["cellmamba"]["embeddings"]["X_cellmamba_scmamba2"]["max_len_from"] == str(
        tmp_path / "run" / "pretrain_config.json")

    alone = copy_model(old, tmp_path / "alone" / "model")
    with pytest.raises(InputError, match=rf"{alone}: the model's training context \(context_length\) is not known: "
                                         rf"expected in {alone / 'inference.json'} .* or, for a directory saved "
                                         rf"before, in {alone.parent / 'pretrain_config.json'}; pass max_len="):
        cellmamba.embed(adata, alone, progress=False)
    proc = cli("embed", "--checkpoint", alone, "--device", "cpu", tmp_path / "missing.h5ad", tmp_path / "o.h5ad")
    assert proc.returncode == 2
    proc = cli("tokenize", "--checkpoint", alone, tmp_path / "missing.h5ad", tmp_path / "o.npz")
    assert proc.returncode == 2
    adata.write_h5ad(tmp_path / "in.h5ad")
    proc = cli("tokenize", "--checkpoint", alone, tmp_path / "in.h5ad", tmp_path / "o.npz")
    assert proc.returncode == 2 and "context_length" in proc.stderr and "--max-len" in proc.stderr
    assert cellmamba.embedding.checkpoint_info(alone)["context_length"] is None  # info still works
    # the explicit context gives the original embedding back
    assert np.array_equal(cellmamba.embed(adata, alone, max_len=SHORT_CONTEXT, progress=False), original)


def test_a_damaged_inference_json_is_named(trained, tmp_path):
    adata = make_adata()
    model = copy_model(trained / "model", tmp_path / "model")
    settings = json.loads((model / "inference.json").read_text())
    for key, value, pattern in (("context_length", None, r"context_length is None"),
                                ("pooling", "max", r"pooling is 'max'"),
                                ("tokenizer", "rank", r"tokenizer 'rank'.*binned"),
                                ("format_version", 99, r"version 99")):
        (model / "inference.json").write_text(json.dumps({**settings, key: value}))
        with pytest.raises(cellmamba.errors.CellmambaError, match=rf"inference\.json: .*{pattern}"):
            cellmamba.embed(adata, model, progress=False)
    (model / "inference.json").write_text("{")
    with pytest.raises(cellmamba.errors.CorruptFileError, match=r"inference\.json: not valid JSON"):
        cellmamba.embed(adata, model, progress=False)


def test_embed_in_scanpys_style_key_added_layer_copy_and_cellxgene_var(runs):
    """key_added names the obsm key; copy embeds a copy and returns it (the input untouched); layer
    reads the counts from a layer (the same embedding as those counts in X); CELLxGENE's var
    columns feature_id / feature_name map the genes as gene_id / the index do."""
    adata = make_adata()
    want = cellmamba.embed(adata.copy(), runs["scmamba2"], batch_size=5, progress=False)
    out = cellmamba.embed(adata, runs["scmamba2"], key_added="X_mine", copy=True, batch_size=5, progress=False)
    assert isinstance(out, ad.AnnData) and np.array_equal(out.obsm["X_mine"], want) and not adata.obsm
    assert out.uns["cellmamba"]["embeddings"]["X_mine"]["layer"] == "X"
    layered = ad.AnnData(X=sp.csr_matrix(np.log1p(adata.X.toarray())), var=adata.var, obs=adata.obs,
                         layers={"raw": adata.X.copy()})
    got = cellmamba.embed(layered, runs["scmamba2"], layer="raw", batch_size=5, progress=False)
    assert np.array_equal(got, want) and layered.uns["cellmamba"]["embeddings"]["X_cellmamba_scmamba2"]["layer"] == "raw"
    with pytest.raises(InputError, match=r"layer 'nope' is not in adata.layers"):
        cellmamba.embed(layered, runs["scmamba2"], layer="nope", progress=False)
    with pytest.raises(InputError, match=r"layers\['lognorm'\] does not hold raw counts"):
        cellmamba.embed(ad.AnnData(X=adata.X, var=adata.var, layers={"lognorm": layered.X}), runs["scmamba2"],
                        layer="lognorm", progress=False)
    with pytest.raises(InputError, match="key_added only"):
        cellmamba.embed(adata, runs["scmamba2"], key="a", key_added="b", progress=False)
    # CELLxGENE's var: feature_id holds the Ensembl ids, the index something else
    cxg = adata.copy()
    cxg.var = pd.DataFrame({"feature_id": list(adata.var_names), "feature_name": [f"sym{i}" for i in range(adata.n_vars)]},
                           index=[str(i) for i in range(adata.n_vars)])
    assert np.array_equal(cellmamba.embed(cxg, runs["scmamba2"], batch_size=5, progress=False), want)
