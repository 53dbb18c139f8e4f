"""The `cellmamba` command line (also `python -m cellmamba`).

    cellmamba pretrain --corpus results/tokens/binned/manifest.json --out results/pretrain/scmamba2 \
        --config '{"recipe": "scmamba2", ...}' [--gene-stats ...] [--gene-sets a.gmt b.gmt] [--log FILE]
    cellmamba embed --checkpoint results/pretrain/scmamba2/model [--vocabulary gene_stats.tsv] \
        [--key K] [--layer L] [--batch-size N] [--device D] in.h5ad out.h5ad
    cellmamba tokenize --checkpoint DIR [--vocabulary gene_stats.tsv] [--max-len N] in.h5ad out.npz
    cellmamba info [--json] DIR

``tokenize`` writes the tokens the model would read as an .npz (see :data:`TOKENS_NPZ_KEYS`).
Errors of the input (cellmamba's own errors) print one line ``cellmamba: error: ...`` and exit 2.

Several GPUs: run pretraining under ``torchrun --nproc_per_node N -m cellmamba pretrain ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing

__all__ = ["main", "TOKENS_NPZ_KEYS"]

#: what `cellmamba tokenize` writes into its .npz
TOKENS_NPZ_KEYS = {
    "offsets": "int64 (n_cells + 1,): cell i's tokens are tokens[offsets[i]:offsets[i + 1]]",
    "tokens": "uint32 (n_tokens,): token ids (gene j of the vocabulary is N_SPECIAL + j; binned cells start with CLS)",
    "values": "uint8 (n_tokens,): binned only, each token's expression bin (0 at CLS)",
    "obs_names": "str (n_cells,): the cells, in the input's order",
    "measured": "bool (n_vocab_genes,): vocabulary genes the input has",
    "tokenizer": "str: 'rank' or 'binned'",
    "value_source": "str: what the values were computed from (counts, log1p_norm, expm1(log1p_norm))",
    "max_len": "int: tokens per cell at most (binned: CLS included)",
    "n_genes_used": "int: input genes mapped to the vocabulary",
    "n_genes_unmapped": "int: input genes outside the vocabulary (dropped)",
}


def _config_from_json(cls, text: str):
    """``--config``: a JSON object of ``cls``'s fields; bad JSON, unknown fields and wrong types
    are InputErrors naming ``--config`` and what was expected."""
    from ._util import dataclass_from_dict
    from .errors import InputError

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--config: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         f"expected an object of {cls.__name__} fields, e.g. '{{\"recipe\": \"scmamba2\"}}'") from exc
    if isinstance(data, dict):
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            want = _json_types(hints.get(key))
            # JSON true / false are Python ints too: a bool passes only where the field is a bool
            if want and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
                names = " or ".join(sorted({t.__name__ for t in want}))
                raise InputError(f"--config: {key} must be {names}, got {type(value).__name__} {value!r}")
    try:
        return dataclass_from_dict(cls, data, where="--config")
    except InputError:
        raise
    except (TypeError, ValueError) as exc:  # a missing field, or a check of the config itself
        raise InputError(f"--config: {exc}") from exc


def _json_types(hint) -> tuple:
    """The JSON value types a field annotation accepts (empty: not checked here)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    out = []
    for a in args:
        a = typing.get_origin(a) or a
        if a is type(None):
            out.append(type(None))
        elif a is float:
            out += [float, int]
        elif a in (int, str, bool, dict):
            out.append(a)
        elif a in (list, tuple):
            out.append(list)
        else:
            return ()  # Literal, nested dataclasses...: left to the config's own checks
    return tuple(out)


def _pretrain(args) -> int:
    from .runlog import setup_logging
    from .train.pretrain import PretrainConfig, run_pretraining

    setup_logging(args.log)
    config = _config_from_json(PretrainConfig, args.config)
    run_pretraining(args.corpus, args.out, config=config, gene_stats=args.gene_stats, gene_sets=args.gene_sets)
    return 0


def _embed(args) -> int:
    from .embedding import embed, model_recipe
    from .io import read_h5ad_checked, write_h5ad_atomic
    from .keys import UNS, obsm_embedding
    from .runlog import setup_logging

    setup_logging(None)
    key = args.key or obsm_embedding(model_recipe(args.checkpoint))
    adata = read_h5ad_checked(args.input)
    emb = embed(adata, args.checkpoint, vocabulary=args.vocabulary, key_added=key, layer=args.layer,
                batch_size=args.batch_size, device=args.device, max_len=args.max_len)
    write_h5ad_atomic(adata, args.output)
    record = adata.uns[UNS]["embeddings"][key]
    print(f"{args.output}: obsm[{key!r}] float32 {emb.shape[0]} x {emb.shape[1]} ({record['recipe']}, "
          f"{record['pooling']} pooling, {record['n_genes_used']} genes used, {record['n_genes_unmapped']} unmapped)")
    return 0


def _tokenize(args) -> int:
    import numpy as np

    from .embedding import tokenize_for_model
    from .io import atomic_path, read_h5ad_checked
    from .runlog import setup_logging

    setup_logging(None)
    adata = read_h5ad_checked(args.input)
    tokens, _ = tokenize_for_model(adata, args.checkpoint, vocabulary=args.vocabulary, max_len=args.max_len,
                                   source=str(args.input))
    arrays = {"offsets": tokens.batch.offsets.astype(np.int64), "tokens": tokens.batch.tokens,
              "obs_names": np.asarray(adata.obs_names, dtype=str), "measured": tokens.measured,
              "tokenizer": np.str_(tokens.tokenizer), "value_source": np.str_(tokens.value_source),
              "max_len": np.int64(tokens.max_len), "n_genes_used": np.int64(tokens.n_genes_used),
              "n_genes_unmapped": np.int64(tokens.n_genes_unmapped)}
    if tokens.batch.values is not None:
        arrays["values"] = tokens.batch.values
    with atomic_path(args.output) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare temporary name
            np.savez(fh, **arrays)
    print(f"{args.output}: {len(tokens.batch)} cells, {len(tokens.batch.tokens)} {tokens.tokenizer} tokens "
          f"(max_len {tokens.max_len}, {tokens.n_genes_used} genes used, {tokens.n_genes_unmapped} unmapped)")
    return 0


def _info(args) -> int:
    from .embedding import checkpoint_info

    info = checkpoint_info(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for name, value in info.items():
        if name == "heads":
            value = ", ".join(f"{k} ({v})" for k, v in value.items()) or "none"
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
            value = f"{value:,}"
        elif isinstance(value, bool):
            value = "present" if value else "missing (pass --vocabulary gene_stats.tsv to embed / tokenize)"
        elif value is None:
            value = "-"
        print(f"{name:<{width}}  {value}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellmamba", description="Mamba single-cell foundation models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain one model on a token corpus (resumes automatically)")
    p.add_argument("--corpus", required=True, help="corpus manifest.json of the recipe's tokenizer")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", required=True, help="PretrainConfig fields as a JSON object")
    p.add_argument("--gene-stats", default=None,
                   help="the corpus' gene table in vocabulary order (copied to model/vocabulary.tsv)")
    p.add_argument("--gene-sets", nargs="*", default=[], help="GMT files (genemamba pathway loss)")
    p.add_argument("--log", default=None, help="also log to this file")
    p.set_defaults(func=_pretrain)

    def model_args(p):
        p.add_argument("--checkpoint", required=True, help="model directory (config.json, model.safetensors)")
        p.add_argument("--vocabulary", default=None,
                       help="gene table in token order (gene_stats.tsv) if the model directory has no vocabulary.tsv")
        p.add_argument("--max-len", type=int, default=None,
                       help="tokens per cell (default: the model's training context, from its inference.json)")

    p = sub.add_parser("embed", help="write cell embeddings into obsm['X_cellmamba_<recipe>']")
    model_args(p)
    p.add_argument("--key", default=None, help="obsm key (default X_cellmamba_<recipe>)")
    p.add_argument("--layer", default=None, help="read raw counts from this layer instead of X")
    p.add_argument("--batch-size", type=int, default=64, help="cells per forward pass")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("input", help="input .h5ad")
    p.add_argument("output", help="output .h5ad (the input plus the embedding)")
    p.set_defaults(func=_embed)

    p = sub.add_parser("tokenize", help="the tokens a model would read, as .npz (for inspection)",
                       epilog="npz keys: " + "; ".join(f"{k}: {v}" for k, v in TOKENS_NPZ_KEYS.items()))
    model_args(p)
    p.add_argument("input", help="input .h5ad")
    p.add_argument("output", help="output .npz")
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("info", help="summary of a model directory (the weights are not loaded)")
    p.add_argument("checkpoint", help="model directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import CellmambaError

    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except CellmambaError as exc:
        # the message names the file / key and the fix; a traceback would only hide it
        print(f"cellmamba: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
