"""Tiny token corpora and pretraining settings for the tests of whole pretraining runs (same seed,
same weights; reruns keep what they should), importable by them and runnable as a script so that
a real process running the workflow's pretrain script can be killed and resumed.

Script: ``python _pretrain_toy.py OUT_DIR CORPUS GENE_STATS SETTINGS_JSON [--kill-at STEP] [--disturb N]``
runs workflow_scripts/pretrain.py (the rule's script) with a stand-in ``snakemake`` object; with
``--kill-at`` the process SIGKILLs itself when optimizer step STEP (0-based) is about to run; with
``--disturb`` it first draws N numbers from every global RNG (as other work in the process would).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import runpy
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[2]
N_GENES = 24
N_CELLS = 24
TOK_MAX = 12


def gene_table() -> pd.DataFrame:
    return pd.DataFrame({"feature_id": [f"ENSG{j:011d}" for j in range(N_GENES)],
                         "feature_name": [f"GENE{j}" for j in range(N_GENES)],
                         "nonzero_median": np.linspace(1.0, 3.0, N_GENES) * 1e3})


def write_gene_stats(path: Path) -> Path:
    gene_table().to_csv(path, sep="\t", index=False)
    return path


def write_corpus(root: Path, tokenizer: str, *, density=0.6) -> Path:
    """One shard of N_CELLS cells, rank (genemamba) or binned (scmamba2) tokens; the manifest path.
    ``density``: the fraction of genes a cell expresses (a number, or one per cell)."""
    from cellmamba.tokenize import (BinnedConfig, RankConfig, ShardWriter, tokenize_binned, tokenize_rank,
                                    write_corpus_manifest)
    from cellmamba.vocab import vocab_hash

    rng = np.random.default_rng(5)
    density = np.broadcast_to(np.asarray(density, dtype=float).reshape(-1, 1), (N_CELLS, 1))
    X = sp.csr_matrix((rng.poisson(3.0, (N_CELLS, N_GENES)) * (rng.random((N_CELLS, N_GENES)) < density))
                      .astype(np.float32))
    if tokenizer == "binned":
        config = BinnedConfig(max_len=TOK_MAX)
        batch, vdtype = tokenize_binned(X, config), np.uint8
    else:
        config = RankConfig(max_len=TOK_MAX)
        batch, vdtype = tokenize_rank(X, gene_table()["nonzero_median"].to_numpy(), config), None
    w = ShardWriter(root / "0", values_dtype=vdtype)
    w.append(np.diff(batch.offsets), batch.tokens, batch.values)
    w.finish(dataset=np.zeros(N_CELLS, np.int32), measured=np.ones((1, N_GENES), bool),
             manifest={"tokenizer": tokenizer, "settings": dataclasses.asdict(config), "stats": {},
                       "vocab_hash": vocab_hash(gene_table()["feature_id"]), "n_genes": N_GENES,
                       "datasets": ["A"], "source": "test"})
    return write_corpus_manifest([root / "0"], root / "manifest.json")


def settings(recipe: str, **changes) -> dict:
    """PretrainConfig fields of a tiny run (d_model 8, one layer, 6 steps, checkpoints every 2)."""
    base = dict(recipe=recipe, backbone="bimamba_mamba1", match_backbone="bimamba_mamba1", d_model=8, n_layers=1,
                d_state=4, context_length=TOK_MAX, batch_size=4, max_steps=6, warmup_steps=1, checkpoint_every=2,
                log_every=1, backend="torch", pathway_weight=0.0)
    return {**base, **changes}


def workflow_settings(flat: dict) -> dict:
    """The pretrain rule's params (what rules/common.smk's pretrain_settings gives and
    PretrainConfig.from_workflow takes) for the PretrainConfig fields ``flat``: every field in the
    ``models.<recipe>`` sub-tree, an empty ``pretrain`` one, the job named after the recipe."""
    assert flat["match_backbone"] == flat["backbone"], "a Mamba job matches its own backbone"
    model = {k: v for k, v in flat.items() if k not in ("recipe", "match_backbone")}
    return {"model": model, "pretrain": {}, "name": flat["recipe"]}


class _Named(dict):
    """Snakemake's named lists: ``x.name`` and ``x.get(name)``."""

    __getattr__ = dict.__getitem__


def run_rule_script(out_dir: Path, corpus: Path, gene_stats: Path, run_settings: dict) -> None:
    """workflow_scripts/pretrain.py as the pretrain rule runs it, with a stand-in ``snakemake``;
    ``run_settings`` are PretrainConfig fields (:func:`settings`)."""
    out_dir = Path(out_dir)
    smk = SimpleNamespace(
        scriptdir=str(REPO / "workflow_scripts"), log=[str(out_dir.parent / f"{out_dir.name}.log")],
        input=_Named(corpus=str(corpus), gene_stats=str(gene_stats)),
        output=SimpleNamespace(model=str(out_dir / "model"), metrics=str(out_dir / "metrics.csv")),
        params=SimpleNamespace(settings=workflow_settings(run_settings),
                               triton_cache=str(out_dir.parent / ".triton_cache")),
        resources=_Named(gpu=0), threads=1)
    runpy.run_path(str(REPO / "workflow_scripts" / "pretrain.py"), init_globals={"snakemake": smk})


def disturb_rng(n: int) -> None:
    """Draw ``n`` numbers from Python's, NumPy's and torch's global generators."""
    import random

    import torch

    for _ in range(n):
        random.random()
    np.random.random(n)
    torch.rand(n)


def _kill_at(step: int) -> None:
    """SIGKILL this process when optimizer step ``step`` is about to run (steps before it are done)."""
    sys.path.insert(0, str(REPO / "src"))
    from cellmamba.train import loop

    original = loop.train_step

    def train_step(*args, **kwargs):
        if kwargs["step"] == step:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    loop.train_step = train_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("corpus")
    p.add_argument("gene_stats")
    p.add_argument("settings")
    p.add_argument("--kill-at", type=int)
    p.add_argument("--disturb", type=int, default=0)
    a = p.parse_args()
    disturb_rng(a.disturb)
    if a.kill_at is not None:
        _kill_at(a.kill_at)
    run_rule_script(Path(a.out_dir), Path(a.corpus), Path(a.gene_stats), json.loads(a.settings))


if __name__ == "__main__":
    main()
