"""The `cellmamba` command line (also `python -m cellmamba`).

    cellmamba pretrain --corpus results/tokens/binned/manifest.json --out results/pretrain/scmamba2 \
        --config '{"recipe": "scmamba2", ...}' [--gene-stats ...] [--gene-sets a.gmt b.gmt] [--log FILE]

Several GPUs: run it under ``torchrun --nproc_per_node N -m cellmamba pretrain ...``.
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _pretrain(args) -> int:
    from .runlog import setup_logging
    from .train.pretrain import PretrainConfig, run_pretraining

    setup_logging(args.log)
    config = PretrainConfig(**json.loads(args.config))
    run_pretraining(args.corpus, args.out, config=config, gene_stats=args.gene_stats, gene_sets=args.gene_sets)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cellmamba", description="Mamba single-cell foundation models")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain one model on a token corpus (resumes automatically)")
    p.add_argument("--corpus", required=True, help="corpus manifest.json of the recipe's tokenizer")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", required=True, help="PretrainConfig fields as a JSON object")
    p.add_argument("--gene-stats", default=None, help="gene table in vocabulary order (genemamba pathways)")
    p.add_argument("--gene-sets", nargs="*", default=[], help="GMT files (genemamba pathway loss)")
    p.add_argument("--log", default=None, help="also log to this file")
    p.set_defaults(func=_pretrain)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
