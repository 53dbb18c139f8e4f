"""The token vocabulary: a few special tokens, then one token per gene of the census gene table.

Token id of gene ``j`` (its row in the gene table, i.e. census var soma_joinid order) is
``N_SPECIAL + j``. The vocabulary hash pins a shard to the gene table it was tokenized with.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError
from .keys import VAR_FEATURE_ID, VAR_FEATURE_NAME

__all__ = [
    "SPECIAL_TOKENS", "PAD_ID", "CLS_ID", "MASK_ID", "EOS_ID", "N_SPECIAL",
    "Vocabulary", "vocab_hash",
]

SPECIAL_TOKENS = ("<pad>", "<cls>", "<mask>", "<eos>")
PAD_ID, CLS_ID, MASK_ID, EOS_ID = range(len(SPECIAL_TOKENS))
N_SPECIAL = len(SPECIAL_TOKENS)


def vocab_hash(feature_ids) -> str:
    """sha256 over the ordered Ensembl ids (one per line): equal iff the gene tables are equal."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, feature_ids)).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Vocabulary:
    """Genes in token order. ``feature_ids``: Ensembl ids; ``feature_names``: symbols."""

    feature_ids: np.ndarray
    feature_names: np.ndarray

    @classmethod
    def from_var(cls, var: pd.DataFrame, *, source: str = "var") -> "Vocabulary":
        """From a census-style var table (index or column ``feature_id``, column ``feature_name``)."""
        ids = var[VAR_FEATURE_ID].to_numpy() if VAR_FEATURE_ID in var else var.index.to_numpy()
        if VAR_FEATURE_NAME not in var:
            raise InputError(f"{source}: missing column {VAR_FEATURE_NAME!r} (the gene symbols)")
        if len(ids) == 0:
            raise InputError(f"{source}: the gene table is empty")
        if pd.Index(ids).has_duplicates:
            dup = pd.Index(ids)[pd.Index(ids).duplicated()][:5].tolist()
            raise InputError(f"{source}: duplicated feature ids {dup}")
        return cls(np.asarray(ids, dtype=str), var[VAR_FEATURE_NAME].to_numpy(dtype=str))

    def __len__(self) -> int:  # number of genes (without special tokens)
        return len(self.feature_ids)

    @property
    def size(self) -> int:
        """Number of token ids, special tokens included."""
        return N_SPECIAL + len(self)

    @property
    def hash(self) -> str:
        return vocab_hash(self.feature_ids)

    def token_ids(self, gene_index: np.ndarray) -> np.ndarray:
        return np.asarray(gene_index, dtype=np.int64) + N_SPECIAL
