"""Positive control for pretraining: on cells with known gene-program structure, does a pretrained
model annotate better from few labels than the same architecture trained from scratch?

    python benchmarks/positive_control.py --size tiny --device cpu --out /tmp/pc/positive_control.csv
    python benchmarks/positive_control.py --size paper --device cuda \
        --out benchmarks/results/positive_control_NVIDIA_H200_<date>.csv

The corpus (:func:`program_design`, :func:`simulate_cells`): the 765 pbmc68k genes of
``cellmamba.datasets.simulate`` at the mean pbmc68k expression profile, plus 11 disjoint gene
programs of 20 genes each (drawn from the genes expressed above the median), a program
multiplying its genes' rates by 2.5 where it is active. A cell type (the label) is a pair of the
8 identity programs (10 of the 28 pairs, so every program is shared by several types and no
single program names a type); three state programs (a cycling / interferon / stress stand-in)
are switched on or off independently of the type, so a cell is one of 10 x 2^3 = 80 states and
the label must be read through variation that is not the label. The counts are the integration
simulator's (``simulate_integration(profiles=...)``: negative binomial, library sizes, gene-wise
batch effects). The pretraining corpus (seed 1, 4 batches, its labels never used) and the
labelled set (seed 2, 2 new batches: batch effects the pretraining never saw) are drawn from the
same programs. The labelled set is split at random into reference (2/3) and query (1/3).

Calibrated so the low-label regime is hard and the full one is not: logistic regression on the
log-normalised counts of the paper-size labelled set (4,500 cells) scores 0.36-0.47 query
accuracy from 1% of the reference (30 cells), 0.89-0.90 from 10% and 0.996 from all 3,000
(seeds 0-2). What pretraining can learn is which genes move together (the programs), which a
classifier from scratch must infer from its few labels.

Then: each recipe is pretrained once on the corpus (``cellmamba.train.run_pretraining``); for
each label fraction and seed, that fraction of the reference cells is drawn (stratified, at
least one cell per class; ``n_labelled``) and each arm, the pretrained model and the same
architecture from random init (``FinetuneConfig(init="scratch")``: same new head, same data
order for the seed), is read out in two ways, scored on the whole query (``score_annotation``):

- ``finetune``: the whole model fine-tuned with a classifier head (``run_annotation``), identical
  settings for both arms: ``--finetune-epochs`` passes, but at least ``--finetune-min-steps``
  optimizer steps, so the few-label runs are not starved of updates; every drawn cell trains (no
  validation split, no best-epoch selection);
- ``probe``: the frozen model's cell embeddings (the recipe's pooling) into a logistic regression
  (standardised, C = 1): what the representation holds, whatever the fine-tuning settings.

Logistic regression on the log-normalised genes (``annotate_baseline``, readout ``genes``) of the
same cells gives the ``logreg`` rows.

Output: ``--out`` (CSV, rewritten atomically after every row; one row per recipe x init x readout
x fraction x seed, plus the ``logreg`` rows) and the plot beside it
(``benchmarks/plot_positive_control.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's package, whatever else is installed
sys.path.insert(0, str(REPO / "benchmarks"))

log = logging.getLogger("positive_control")

#: fixed seeds: the design (programs, types), the corpus, the labelled set and its split
DESIGN_SEED, CORPUS_SEED, LABELLED_SEED = 0, 1, 2
RECIPES = ("genemamba", "scmamba2")
READOUTS = ("probe", "finetune")

#: the two sizes; every field can be overridden by the flag of the same name
PRESETS = {
    # CI / CPU: runs in about a minute on two cores; checks the outputs, measures nothing
    "tiny": dict(corpus_cells=3000, labelled_cells=600, d_model=32, n_layers=1, d_state=16, context_length=64,
                 pretrain_steps=30, pretrain_batch=16, pretrain_lr=1e-3, finetune_epochs=2, finetune_min_steps=6,
                 finetune_batch=32, finetune_lr=3e-3, seeds=[0], num_workers=0),
    # one H200, one command (~9 min, estimate in benchmarks/README.md): each recipe sees ~100k
    # corpus cells once (800 steps x 128 cells); a cell expresses ~480 genes (99%: <= 628), so a
    # 640-token context holds nearly every cell whole
    "paper": dict(corpus_cells=100_000, labelled_cells=4500, d_model=512, n_layers=4, d_state=None,
                  context_length=640, pretrain_steps=800, pretrain_batch=128, pretrain_lr=3e-4,
                  finetune_epochs=3, finetune_min_steps=60, finetune_batch=64, finetune_lr=3e-4, seeds=[0, 1, 2],
                  num_workers=4),
}

COLUMNS = ["recipe", "init", "readout", "label_fraction", "n_labelled", "seed", "accuracy", "f1_macro", "n_query",
           "n_classes", "finetune_steps", "finetune_epochs", "finetune_lr", "fit_s", "d_model", "n_layers",
           "context_length", "corpus_cells", "pretrain_steps", "pretrain_batch", "pretrain_loss_first",
           "pretrain_loss_final", "pretrain_s", "size", "device", "backend", "torch_version", "code", "date"]
INTEGER_COLUMNS = ("n_labelled", "seed", "n_query", "n_classes", "finetune_steps", "finetune_epochs", "d_model",
                   "n_layers", "context_length", "corpus_cells", "pretrain_steps", "pretrain_batch")


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Design:
    """Gene programs, cell types and cell states of the simulated cells."""

    profiles: pd.DataFrame             # (n_states, n_genes) relative expression, index = state names
    state_type: dict[str, str]         # state name -> cell type (the label)
    programs: dict[str, list[str]]     # program name -> its genes
    type_programs: dict[str, tuple]    # cell type -> its two identity programs


def program_design(*, n_identity: int = 8, n_types: int = 10, n_state: int = 3, genes_per_program: int = 20,
                   fold: float = 2.5, seed: int = DESIGN_SEED) -> Design:
    """Cell types as pairs of identity programs, crossed with independent state programs.

    Base rates: the mean of :func:`cellmamba.datasets.simulate.pbmc68k_profiles` over its
    types (765 real genes). Programs: disjoint random sets of ``genes_per_program`` genes among
    those above the median base rate; an active program multiplies its genes' rates by ``fold``.
    Types: ``n_types`` distinct pairs of the ``n_identity`` identity programs; states: each type
    with every on / off pattern of the ``n_state`` state programs (``"T3|010"``).
    """
    from cellmamba.datasets.simulate import pbmc68k_profiles

    rng = np.random.default_rng(seed)
    base = pbmc68k_profiles().mean(axis=0)
    genes = base.index.astype(str)
    candidates = np.flatnonzero(base.to_numpy() > np.median(base.to_numpy()))
    picks = rng.choice(candidates, size=(n_identity + n_state, genes_per_program), replace=False)
    names = [f"id{k}" for k in range(n_identity)] + [f"state{k}" for k in range(n_state)]
    pairs = list(itertools.combinations(range(n_identity), 2))
    chosen = [pairs[i] for i in sorted(rng.choice(len(pairs), size=n_types, replace=False))]
    rows, index, state_type = [], [], {}
    for t, pair in enumerate(chosen):
        for pattern in itertools.product((0, 1), repeat=n_state):
            rates = base.to_numpy().copy()
            for k in list(pair) + [n_identity + j for j, on in enumerate(pattern) if on]:
                rates[picks[k]] *= fold
            name = f"T{t}|" + "".join(map(str, pattern))
            rows.append(rates)
            index.append(name)
            state_type[name] = f"T{t}"
    profiles = pd.DataFrame(np.vstack(rows), index=pd.Index(index, name="state"), columns=pd.Index(genes, name="gene"))
    return Design(profiles=profiles, state_type=state_type,
                  programs={n: genes[p].tolist() for n, p in zip(names, picks)},
                  type_programs={f"T{t}": tuple(names[k] for k in pair) for t, pair in enumerate(chosen)})


def simulate_cells(design: Design, n_cells: int, *, n_batches: int, seed: int):
    """Counts of ``n_cells`` cells of the design's states (``simulate_integration``): obs
    ``cell_type`` (the type), ``state`` (type + state programs), ``batch``."""
    from cellmamba.datasets.simulate import simulate_integration
    from cellmamba.keys import OBS_CELL_TYPE

    adata = simulate_integration(n_cells=n_cells, n_batches=n_batches, seed=seed, profiles=design.profiles,
                                 composition_alpha=5.0, batch_effect_sd=0.3)
    state = adata.obs[OBS_CELL_TYPE].astype(str)
    adata.obs["state"] = pd.Categorical(state)
    adata.obs[OBS_CELL_TYPE] = pd.Categorical(state.map(design.state_type))
    return adata


def gene_table(adata) -> pd.DataFrame:
    """The vocabulary (gene_stats.tsv columns): a stand-in Ensembl id per simulated gene, its
    symbol, and the non-zero median of count / total x 1e4 over ``adata`` (the statistic the
    corpus gene table holds, which the rank tokenizer divides by)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    norm = (sp.diags(1e4 / np.maximum(totals, 1)) @ X).tocsc()
    medians = np.array([np.median(norm.data[norm.indptr[j]:norm.indptr[j + 1]]) if norm.indptr[j + 1] > norm.indptr[j]
                        else np.nan for j in range(X.shape[1])])
    return pd.DataFrame({"feature_id": [f"ENSG{j:011d}" for j in range(adata.n_vars)],
                         "feature_name": adata.var_names.astype(str), "nonzero_median": medians})


def write_corpus(adata, vocabulary: pd.DataFrame, root: Path, *, tokenizer: str, max_len: int) -> Path:
    """One token shard of every cell of ``adata`` (no labels) in the fine-tuning tokenization
    (``cellmamba.tasks.tokenize_dataset``), and its corpus manifest; returns the manifest path."""
    from cellmamba.tasks import tokenize_dataset
    from cellmamba.tokenize import BinnedConfig, RankConfig, ShardWriter, write_corpus_manifest
    from cellmamba.vocab import vocab_hash

    tokens = tokenize_dataset(adata, vocabulary, tokenizer=tokenizer, max_len=max_len, source="corpus")
    settings = BinnedConfig(max_len=max_len) if tokenizer == "binned" else RankConfig(max_len=max_len)
    writer = ShardWriter(root / "0", values_dtype=np.uint8 if tokenizer == "binned" else None)
    batch = tokens.batch
    writer.append(np.diff(batch.offsets), batch.tokens, batch.values)
    writer.finish(dataset=np.zeros(len(batch), np.int32), measured=tokens.measured[None, :],
                  manifest={"tokenizer": tokenizer, "settings": dataclasses.asdict(settings), "stats": batch.stats,
                            "vocab_hash": vocab_hash(vocabulary["feature_id"]), "n_genes": len(vocabulary),
                            "datasets": ["positive_control_corpus"], "source": "benchmarks/positive_control.py"})
    return write_corpus_manifest([root / "0"], root / "manifest.json")


# --------------------------------------------------------------------------- labels


def split_labelled(adata, *, seed: int = LABELLED_SEED, query_fraction: float = 1 / 3) -> None:
    """obs ``split``: a random ``query_fraction`` of the cells ``query``, the rest ``reference``."""
    from cellmamba.keys import OBS_SPLIT

    order = np.random.default_rng([seed, 1]).permutation(adata.n_obs)
    split = np.full(adata.n_obs, "reference", dtype=object)
    split[order[:int(round(query_fraction * adata.n_obs))]] = "query"
    adata.obs[OBS_SPLIT] = pd.Categorical(split, categories=["reference", "query"])


def pick_labelled(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a stratified ``fraction`` of ``labels``: round(fraction x n) cells,
    but at least one of every class, shared out in proportion to the class sizes (largest
    remainders), drawn at random within each class. ``fraction >= 1``: every position."""
    labels = np.asarray(labels).astype(str)
    if fraction >= 1:
        return np.arange(len(labels))
    classes, codes = np.unique(labels, return_inverse=True)
    sizes = np.bincount(codes)
    target = max(int(round(fraction * len(labels))), len(classes))
    quota = sizes * target / len(labels)
    take = np.minimum(np.maximum(np.floor(quota).astype(np.int64), 1), sizes)
    for c in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if take.sum() >= target:
            break
        if take[c] < sizes[c]:
            take[c] += 1
    rng = np.random.default_rng([seed, 11])
    picked = [rng.choice(np.flatnonzero(codes == c), size=int(take[c]), replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(picked))


def labelled_positions(adata, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of the query cells and of a :func:`pick_labelled` draw of the reference."""
    from cellmamba.keys import OBS_CELL_TYPE, OBS_SPLIT

    split = adata.obs[OBS_SPLIT].astype(str).to_numpy()
    ref = np.flatnonzero(split == "reference")
    chosen = ref[pick_labelled(adata.obs[OBS_CELL_TYPE].to_numpy()[ref], fraction, seed)]
    return np.sort(np.concatenate([chosen, np.flatnonzero(split == "query")]))


def predictions(adata, predicted) -> pd.DataFrame:
    """A predictions table (``run_annotation``'s columns) of ``adata``'s cells."""
    from cellmamba.keys import OBS_CELL_TYPE, OBS_SPLIT

    split = adata.obs[OBS_SPLIT].astype(str).to_numpy()
    return pd.DataFrame({"cell": adata.obs_names.astype(str), "split": split,
                         "cell_type": adata.obs[OBS_CELL_TYPE].astype(str).to_numpy(),
                         "predicted": np.where(split == "query", np.asarray(predicted, dtype=object), "")})


def score(predictions: pd.DataFrame) -> dict:
    from cellmamba.metrics.classification import score_annotation

    q = predictions[predictions["split"] == "query"]
    ref = predictions.loc[predictions["split"] == "reference", "cell_type"]
    s = score_annotation(q["cell_type"], q["predicted"], reference_labels=ref)
    return {"n_labelled": len(ref), "accuracy": s["accuracy"], "f1_macro": s["f1_macro"], "n_query": len(q),
            "n_classes": int(ref.nunique())}


# --------------------------------------------------------------------------- the runs


def pretrain(recipe: str, manifest: Path, gene_stats: Path, out_dir: Path, p: argparse.Namespace, device) -> dict:
    """Pretrain ``recipe`` on the corpus; the model directory, the first and last logged loss, seconds."""
    from cellmamba.train.pretrain import PretrainConfig, run_pretraining

    cfg = PretrainConfig(recipe=recipe, backbone="bimamba_mamba2", match_backbone="bimamba_mamba2",
                         d_model=p.d_model, n_layers=p.n_layers, d_state=p.d_state, context_length=p.context_length,
                         batch_size=p.pretrain_batch, max_steps=p.pretrain_steps, lr=p.pretrain_lr,
                         warmup_steps=max(1, p.pretrain_steps // 10), checkpoint_every=p.pretrain_steps,
                         log_every=max(1, min(50, p.pretrain_steps // 20)), pathway_weight=0.0,
                         num_workers=p.num_workers, backend=p.backend, seed=0)
    t0 = time.perf_counter()
    run_pretraining(manifest, out_dir, config=cfg, gene_stats=gene_stats, device=device)
    seconds = time.perf_counter() - t0
    metrics = pd.read_csv(out_dir / "metrics.csv")
    return {"model_dir": out_dir / "model", "pretrain_loss_first": float(metrics["loss"].iloc[0]),
            "pretrain_loss_final": float(metrics["loss"].iloc[-1]), "pretrain_s": round(seconds, 1)}


def finetune_config(p: argparse.Namespace, n_train: int, *, seed: int, init: str):
    """Identical settings for both arms: ``finetune_epochs`` epochs, at least ``finetune_min_steps`` steps."""
    from cellmamba.tasks import FinetuneConfig

    base = FinetuneConfig(epochs=1, lr=p.finetune_lr, batch_size=p.finetune_batch, max_len=p.context_length,
                          valid_fraction=0.0, seed=seed, init=init, backend=p.backend, embed_batch_size=256)
    per_epoch = base.to_train_config(n_train).max_steps
    epochs = max(p.finetune_epochs, -(-p.finetune_min_steps // per_epoch))
    return dataclasses.replace(base, epochs=epochs)


def embeddings(model_dir: Path, adata, vocabulary: pd.DataFrame, p: argparse.Namespace, *, init: str,
               seed: int) -> np.ndarray:
    """float32 (n_cells, d_model): the frozen model's cell embeddings (the recipe's pooling), in
    the tokens and forward pass fine-tuning uses; ``init="scratch"``: of the seeded random init."""
    from cellmamba.tasks import FinetuneConfig, tokenize_dataset
    from cellmamba.tasks.finetune import (collator_for, embed_cells, load_for_finetuning, model_tokenizer,
                                          resolve_pooling)
    from cellmamba.tasks.tokens import TokenCells

    tokenizer = model_tokenizer(model_dir)
    model = load_for_finetuning(model_dir, {}, backend=p.backend, seed=seed, init=init)
    tokens = tokenize_dataset(adata, vocabulary, tokenizer=tokenizer, max_len=p.context_length,
                              n_bins=model.config.embedding.n_bins, source="labelled set")
    plain = collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=seed)
    emb, _ = embed_cells(model, TokenCells(tokens), plain, pooling=resolve_pooling(FinetuneConfig(), tokenizer),
                         batch_size=256, device=p.device, progress=False)
    return emb


def linear_probe(emb: np.ndarray, adata, seed: int) -> np.ndarray:
    """Query predictions of a logistic regression (C = 1, standardised features) fitted on the
    reference cells' embeddings ``emb`` (rows = ``adata``'s cells)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from cellmamba.keys import OBS_CELL_TYPE, OBS_SPLIT

    split = adata.obs[OBS_SPLIT].astype(str).to_numpy()
    labels = adata.obs[OBS_CELL_TYPE].astype(str).to_numpy()
    ref = split == "reference"
    scaler = StandardScaler().fit(emb[ref])
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(scaler.transform(emb[ref]), labels[ref])
    return clf.predict(scaler.transform(emb))


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def code_revision() -> str:
    """$CELLMAMBA_CODE where set (a copy of the tree whose git metadata is not its own, e.g. on a
    lent GPU machine), else the checkout's short commit, ``-dirty`` with uncommitted changes to
    tracked files; "" without git."""
    if os.environ.get("CELLMAMBA_CODE"):
        return os.environ["CELLMAMBA_CODE"]
    try:
        git = ["git", "-C", str(REPO)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def probe_rows(recipe: str, model_dir: Path, labelled, vocabulary, p: argparse.Namespace, runs: list, settings: dict,
               add) -> None:
    """The ``probe`` rows of one recipe: both arms' frozen embeddings of the labelled cells into
    :func:`linear_probe`, for each (fraction, seed) of ``runs``; ``add`` records a row."""
    # frozen embeddings: the pretrained ones once, the random init's per seed (it is the seed's)
    t1 = time.perf_counter()
    emb = embeddings(model_dir, labelled, vocabulary, p, init="pretrained", seed=0)
    frozen = {("pretrained", s): emb for s in p.seeds}
    frozen.update({("scratch", s): embeddings(model_dir, labelled, vocabulary, p, init="scratch", seed=s)
                   for s in p.seeds})
    embed_s = (time.perf_counter() - t1) / (1 + len(p.seeds))
    for (fraction, seed), init in itertools.product(runs, ("pretrained", "scratch")):
        keep = labelled_positions(labelled, fraction, seed)
        t1 = time.perf_counter()
        pred = predictions(labelled[keep], linear_probe(frozen[init, seed][keep], labelled[keep], seed))
        add({"recipe": recipe, "init": init, "readout": "probe", "label_fraction": fraction, "seed": seed,
             **score(pred), **settings}, time.perf_counter() - t1 + embed_s)


def run(p: argparse.Namespace, work: Path) -> pd.DataFrame:
    """Simulate, tokenize, pretrain each recipe; for every fraction x seed fine-tune both arms,
    probe both arms' frozen embeddings and fit logreg on the genes. ``p.out`` is rewritten
    (atomically) after every row, so a run stopped at a time limit keeps the rows it finished
    (logreg's and the probes' first: they cost seconds)."""
    import torch

    from cellmamba.baselines.annotation import annotate_baseline
    from cellmamba.keys import OBS_SPLIT
    from cellmamba.tasks import run_annotation
    from cellmamba.train.pretrain import RECIPE_TOKENIZER

    common = {"size": p.size, "device": device_name(p.device), "backend": p.backend,
              "torch_version": torch.__version__, "code": code_revision(), "date": dt.date.today().isoformat()}
    rows: list[dict] = []
    runs = list(itertools.product(p.fractions, p.seeds))

    def add(row: dict, seconds: float) -> None:
        rows.append({**row, "fit_s": round(seconds, 1), **common})
        write_csv(as_table(rows), p.out)
        log.info("%s %s %s, %g of the labels (%d cells), seed %d: accuracy %.3f, macro F1 %.3f", row["recipe"],
                 row["init"], row["readout"], row["label_fraction"], row["n_labelled"], row["seed"], row["accuracy"],
                 row["f1_macro"])

    design = program_design()
    t0 = time.perf_counter()
    labelled = simulate_cells(design, p.labelled_cells, n_batches=2, seed=LABELLED_SEED)
    split_labelled(labelled)
    for fraction, seed in runs:
        subset = labelled[labelled_positions(labelled, fraction, seed)].copy()
        t1 = time.perf_counter()
        pred = annotate_baseline(subset, "logreg", seed=seed)
        add({"recipe": "logreg", "init": "baseline", "readout": "genes", "label_fraction": fraction, "seed": seed,
             **score(pred)}, time.perf_counter() - t1)
    corpus = simulate_cells(design, p.corpus_cells, n_batches=4, seed=CORPUS_SEED)
    vocabulary = gene_table(corpus)
    gene_stats = work / "gene_stats.tsv"
    vocabulary.to_csv(gene_stats, sep="\t", index=False)
    (work / "design.json").write_text(json.dumps({"programs": design.programs, "type_programs": design.type_programs},
                                                 indent=1))
    manifests = {tok: write_corpus(corpus, vocabulary, work / "tokens" / tok, tokenizer=tok, max_len=p.context_length)
                 for tok in sorted({RECIPE_TOKENIZER[r] for r in p.recipes})}
    del corpus
    log.info("%d corpus and %d labelled cells simulated, logreg fitted, corpus tokenized: %.0f s", p.corpus_cells,
             p.labelled_cells, time.perf_counter() - t0)

    for recipe in p.recipes:
        pre = pretrain(recipe, manifests[RECIPE_TOKENIZER[recipe]], gene_stats, work / "pretrain" / recipe, p, p.device)
        log.info("%s pretrained: loss %.4g -> %.4g in %.0f s", recipe, pre["pretrain_loss_first"],
                 pre["pretrain_loss_final"], pre["pretrain_s"])
        settings = {"d_model": p.d_model, "n_layers": p.n_layers, "context_length": p.context_length,
                    "corpus_cells": p.corpus_cells, "pretrain_steps": p.pretrain_steps,
                    "pretrain_batch": p.pretrain_batch, **{k: v for k, v in pre.items() if k != "model_dir"}}
        if "probe" in p.readouts:
            probe_rows(recipe, pre["model_dir"], labelled, vocabulary, p, runs, settings, add)
        for fraction, seed in runs if "finetune" in p.readouts else ():
            subset = labelled[labelled_positions(labelled, fraction, seed)].copy()
            n_labelled = int((subset.obs[OBS_SPLIT] == "reference").sum())
            for init in ("pretrained", "scratch"):
                cfg = finetune_config(p, n_labelled, seed=seed, init=init)
                out = work / "finetune" / f"{recipe}_{init}_{fraction:g}_{seed}"
                t1 = time.perf_counter()
                pred = run_annotation(subset, pre["model_dir"], vocabulary, config=cfg, out_dir=out, device=p.device)
                add({"recipe": recipe, "init": init, "readout": "finetune", "label_fraction": fraction, "seed": seed,
                     **score(pred), "finetune_steps": cfg.to_train_config(n_labelled).max_steps,
                     "finetune_epochs": cfg.epochs, "finetune_lr": cfg.lr, **settings}, time.perf_counter() - t1)
                shutil.rmtree(out, ignore_errors=True)
    return as_table(rows)


def as_table(rows: list[dict]) -> pd.DataFrame:
    """The CSV's columns in order; integer columns stay integers (empty in the logreg rows)."""
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return table.astype({c: "Int64" for c in INTEGER_COLUMNS})


def write_csv(table: pd.DataFrame, out: Path) -> Path:
    from cellmamba.io import atomic_path

    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Positive control for pretraining: pretrained vs scratch models "
                                 "annotating simulated cells of known gene programs from few labels.",
                                 epilog="Design and protocol: the module docstring and benchmarks/README.md.")
    ap.add_argument("--size", choices=sorted(PRESETS), default="tiny", help="preset (default tiny)")
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0],
                    help="fractions of the reference cells that keep their labels")
    ap.add_argument("--readouts", nargs="+", choices=READOUTS, default=list(READOUTS),
                    help="which readouts of each recipe to run (default both)")
    ap.add_argument("--seeds", nargs="+", type=int, help="fine-tuning seeds (subsample, head init, data order)")
    ap.add_argument("--out", type=Path, required=True, help="CSV; the plot goes beside it (.png)")
    ap.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    ap.add_argument("--backend", default=None,
                    help="SSM kernels: torch | cuda | auto (default: torch on CPU, auto on CUDA)")
    ap.add_argument("--work", type=Path,
                    help="working directory, kept (must be empty or absent; default: a temporary one, removed)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every package step (INFO)")
    for key, value in PRESETS["paper"].items():
        if key != "seeds":
            kind = float if isinstance(value, float) else int
            ap.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                            help=f"tiny: {PRESETS['tiny'][key]}, paper: {value}")
    p = ap.parse_args(argv)
    for key, value in PRESETS[p.size].items():
        if getattr(p, key) is None:
            setattr(p, key, value)
    if any(not 0 < f <= 1 for f in p.fractions):
        ap.error(f"--fractions must be in (0, 1], got {p.fractions}")
    p.fractions = sorted(set(p.fractions))
    p.seeds = sorted(set(p.seeds))
    if p.device is None:
        import torch

        p.device = "cuda" if torch.cuda.is_available() else "cpu"
    if p.backend is None:
        p.backend = "auto" if p.device.startswith("cuda") else "torch"
    return p


def main(argv=None) -> Path:
    p = parse_args(argv)
    from cellmamba.runlog import setup_logging

    setup_logging(None, level=logging.INFO)
    if not p.verbose:
        logging.getLogger("cellmamba").setLevel(logging.WARNING)
    if p.work is not None and p.work.exists() and any(p.work.iterdir()):
        raise SystemExit(f"--work {p.work}: not empty")
    work = p.work or Path(tempfile.mkdtemp(prefix="positive_control_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        table = run(p, work)
    finally:
        if p.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = p.out
    log.info("wrote %s (%d rows) in %.0f s", out, len(table), time.perf_counter() - t0)
    if not p.no_plot:
        from plot_positive_control import plot

        log.info("wrote %s", plot([out], out.with_suffix(".png")))
    return out


if __name__ == "__main__":
    main()
