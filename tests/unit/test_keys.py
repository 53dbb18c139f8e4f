"""cellmamba.keys spells every AnnData key once; no other module spells them (STYLE.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cellmamba import keys

SRC = Path(keys.__file__).parent
ROOTS = (SRC, SRC.parents[1] / "workflow_scripts")
#: key constant prefix -> the AnnData slot its keys live in
SLOTS = {"OBS": "obs", "VAR": "var", "OBSM": "obsm", "VARM": "varm", "LAYER": "layers", "UNS": "uns"}
KEYS = {name: value for name, value in vars(keys).items() if name.isupper()}

#: modules another change is restructuring; the key literals they still spell are replaced once it
#: has landed (to do: replace them, then empty this table)
TODO = {
    "metrics/perturbation.py": set(),
    "baselines/perturbation.py": set(),
    "datasets/gears_split.py": set(),
}
#: key literals in AnnData position that name another schema's column, not cellmamba's key
OTHER_SCHEMA = {
    # CellTypist / Kang source columns turned into CELLxGENE census obs columns
    "census_store.py": {keys.OBS_CELL_TYPE, keys.OBS_CONDITION},
    # pbmc10k's published obs column, read into OBS_BATCH through keys.batch_key
    "datasets/readers.py": {keys.OBS_BATCH},
}
#: key values that are also ordinary words in other roles (the package name, record fields, argument
#: defaults, x_kind values, other tables' columns, GTF attributes): checked only where they index an AnnData slot
WORDS = {keys.UNS, keys.OBS_SPLIT, keys.OBS_CELL_TYPE, keys.OBS_BATCH, keys.OBS_CONDITION, keys.OBS_MODALITY,
         keys.LAYER_COUNTS, keys.VARM_MEASURED, keys.UNS_X_KIND, keys.UNS_READER, keys.UNS_SIMULATED,
         keys.UNS_SIMULATION, keys.UNS_PROVENANCE, keys.VAR_GENE_ID, keys.VAR_LINKED_GENE, keys.VAR_FEATURE_TYPE,
         keys.OBS_N_GENES, keys.OBS_TOTAL_COUNTS, keys.VAR_GENE_NAME}


def _slot(name: str) -> str:
    return SLOTS[name.split("_")[0]]


def _sources():
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")):
            if path != SRC / "keys.py":
                yield (path.relative_to(SRC).as_posix() if root == SRC else f"workflow_scripts/{path.name}",
                       ast.parse(path.read_text(), filename=str(path)))


def _slot_of(node) -> str | None:
    """``adata.obs`` -> "obs"; ``adata.uns[UNS][...]`` -> "uns"; anything else -> None."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.attr if isinstance(node, ast.Attribute) and node.attr in SLOTS.values() else None


def _slot_literals(tree):
    """(line, slot, key) of string literals used as AnnData keys: ``x.obs["k"]``, ``x.uns[UNS].get("k")``,
    ``"k" in x.obsm``."""
    for n in ast.walk(tree):
        slot, lit = None, None
        if isinstance(n, ast.Subscript):
            slot, lit = _slot_of(n.value), n.slice
        elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.args
              and n.func.attr in {"get", "pop", "setdefault"}):
            slot, lit = _slot_of(n.func.value), n.args[0]
        elif isinstance(n, ast.Compare) and isinstance(n.ops[0], (ast.In, ast.NotIn)):
            slot, lit = _slot_of(n.comparators[0]), n.left
        if slot and isinstance(lit, ast.Constant) and isinstance(lit.value, str):
            yield n.lineno, slot, lit.value


def test_key_constants_are_distinct_nonempty_strings():
    assert KEYS and all(isinstance(v, str) and v for v in KEYS.values())
    by_slot: dict[str, dict[str, str]] = {}
    for name, value in KEYS.items():
        if name != "UNS":
            seen = by_slot.setdefault(_slot(name), {})
            assert value not in seen, f"{name} and {seen.get(value)} are both {value!r}"
            seen[value] = name
    assert keys.UNS not in by_slot["uns"]
    assert keys.obsm_embedding("r") not in by_slot["obsm"]


def test_todo_and_exemptions_name_existing_modules():
    for rel in (*TODO, *OTHER_SCHEMA):
        assert (SRC / rel).is_file(), rel
    assert WORDS <= set(KEYS.values())


def test_no_module_spells_a_key_in_anndata_position():
    slot_keys = {(_slot(name), value) for name, value in KEYS.items()}
    found = []
    for rel, tree in _sources():
        allowed = TODO.get(rel, set()) | OTHER_SCHEMA.get(rel, set())
        found += [f"{rel}:{line}: {slot}[{key!r}]" for line, slot, key in _slot_literals(tree)
                  if (slot, key) in slot_keys and key not in allowed]
    assert not found, "use the cellmamba.keys constant:\n" + "\n".join(found)


@pytest.mark.parametrize("value", sorted(set(KEYS.values()) - WORDS))
def test_no_module_spells_a_distinctive_key(value):
    found = [f"{rel}:{n.lineno}" for rel, tree in _sources() if value not in TODO.get(rel, set())
             for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == value]
    assert not found, f"{value!r} is spelled outside cellmamba/keys.py: {found}"


def test_the_scan_sees_literals():
    tree = ast.parse('a.obsm["X_emb"]\nb.uns[UNS].get("reader")\n"counts" in c.layers\nd["x"]\n')
    assert list(_slot_literals(tree)) == [(1, "obsm", "X_emb"), (2, "uns", "reader"), (3, "layers", "counts")]
