"""config/datasets.yaml against config/datasets.schema.yaml, and against the package's readers."""
from __future__ import annotations

import copy
import inspect
import re

import jsonschema
import pytest
import yaml

from cellmamba.datasets import READERS, X_KINDS


@pytest.fixture(scope="module")
def registry(repo_root):
    with open(repo_root / "config" / "datasets.yaml") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def validator(repo_root):
    with open(repo_root / "config" / "datasets.schema.yaml") as fh:
        schema = yaml.safe_load(fh)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, registry):
    return [e.message for e in validator.iter_errors(registry)]


def test_registry_validates(registry, validator):
    assert _errors(validator, registry) == []


def test_every_key_is_commented(repo_root):
    lines = (repo_root / "config" / "datasets.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w]*:(\s|$)", line):
            above = lines[i - 1].strip() if i else ""
            assert "#" in line or above.startswith("#"), f"config/datasets.yaml:{i + 1}: key without a comment: {line!r}"


def test_schema_forbids_unknown_keys_at_every_level(repo_root):
    with open(repo_root / "config" / "datasets.schema.yaml") as fh:
        schema = yaml.safe_load(fh)

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node or "patternProperties" in node:
                assert node.get("additionalProperties") is False, f"{where}: additionalProperties must be false"
            for k, v in node.items():
                if k not in ("if", "not", "oneOf", "anyOf"):  # conditions match part of an object; they do not define it
                    walk(v, f"{where}/{k}")

    walk(schema, "schema")


def test_manual_text_is_parsed(registry):
    manual = registry["datasets"]["hpancreas"]["files"]["query"]["manual"]
    assert manual.startswith("Download demo_test.h5ad") and "#" not in manual
    assert "<data_dir>/hpancreas/demo_test.h5ad" in manual


def test_registry_lists_the_datasets(registry):
    expected = {"pbmc10k": "integration", "sim_integration": "integration", "myeloid": "annotation",
                "ms": "annotation", "hpancreas": "annotation", "pbmc68k_reduced": "annotation",
                "norman": "perturbation", "bmmc_cite": "multiomics", "bmmc_multiome": "multiomics",
                "sim_perturbation": "perturbation", "sim_multiome": "multiomics", "hsmm": "trajectory"}
    assert {name: e["task"] for name, e in registry["datasets"].items()} == expected


@pytest.mark.parametrize("edit", [
    pytest.param(lambda r: r.update(version=1), id="top-level"),
    pytest.param(lambda r: r["datasets"]["pbmc10k"].update(label_key="str_labels"), id="entry"),
    pytest.param(lambda r: r["datasets"]["pbmc10k"]["files"]["pbmc8k"].update(md5="0" * 32), id="file"),
    pytest.param(lambda r: r["datasets"]["ms"]["keys"].update(labels="x"), id="keys"),
    pytest.param(lambda r: r["datasets"]["pbmc10k"]["protocol"].update(n_hvgs=1200), id="protocol"),
    pytest.param(lambda r: r["datasets"]["sim_integration"]["options"].update(n_cell=10), id="options"),
    pytest.param(lambda r: r["datasets"]["hpancreas"]["files"]["reference"].pop("manual"), id="url-null-no-manual"),
    pytest.param(lambda r: r["datasets"]["norman"]["files"]["h5ad"].update(gunzip=True), id="member-and-gunzip"),
    pytest.param(lambda r: r["datasets"]["norman"]["files"]["h5ad"].update(sha256="ABC"), id="bad-sha256"),
    pytest.param(lambda r: r["datasets"]["norman"].update(reader="gears"), id="unknown-reader"),
    pytest.param(lambda r: r["datasets"]["norman"].update(x_kind="log"), id="unknown-x-kind"),
    pytest.param(lambda r: r["datasets"]["norman"]["files"]["h5ad"].update(name="a/b.h5ad"), id="name-with-dir"),
    pytest.param(lambda r: r["datasets"]["sim_multiome"]["files"]["positions"].update(url="https://x"),
                 id="path-and-url"),
    pytest.param(lambda r: r["datasets"]["ms"].pop("census_exclusion"), id="no-census-exclusion"),
    pytest.param(lambda r: r["datasets"]["ms"]["census_exclusion"].update(not_in_census="why"),
                 id="exclusion-and-not-in-census"),
    pytest.param(lambda r: r["datasets"]["ms"].update(census_exclusion={"verified": True}), id="exclusion-of-nothing"),
    pytest.param(lambda r: r["datasets"]["ms"]["census_exclusion"].update(collection_dois=["doi:10.1038/x"]),
                 id="doi-with-prefix"),
])
def test_stale_or_wrong_keys_fail(registry, validator, edit):
    broken = copy.deepcopy(registry)
    edit(broken)
    assert _errors(validator, broken), "the schema accepted a stale / wrong key"


def test_entries_match_the_readers(registry, repo_root):
    schema_readers = set(READERS)
    for name, entry in registry["datasets"].items():
        assert entry["reader"] in schema_readers, name
        assert entry["x_kind"] in X_KINDS, name
        reader = READERS[entry["reader"]]
        accepted = set(inspect.signature(reader).parameters)
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(reader).parameters.values())
        for option in entry.get("options") or {}:
            assert has_var_kw or option in accepted, f"{name}: reader {entry['reader']} takes no option {option!r}"
        for spec in entry["files"].values():
            if "path" in spec:  # shipped with the repository
                assert (repo_root / spec["path"]).is_file(), (name, spec["path"])
            else:
                assert spec["url"] is not None or spec.get("manual"), name


def test_simulator_options_are_the_simulators_keywords(registry):
    from cellmamba.datasets import simulate_integration, simulate_multiome, simulate_perturbation

    for name, fn in (("sim_integration", simulate_integration), ("sim_perturbation", simulate_perturbation),
                     ("sim_multiome", simulate_multiome)):
        options = set(registry["datasets"][name].get("options") or {})
        assert options <= set(inspect.signature(fn).parameters) - {"positions"}, (name, options)


def test_reader_file_names(registry):
    files = {name: set(e["files"]) for name, e in registry["datasets"].items()}
    assert files["pbmc10k"] == {"gene_info", "metadata", "pbmc8k", "pbmc4k"}
    for name in ("myeloid", "ms", "hpancreas"):
        assert files[name] == {"reference", "query"}
    for name in ("norman", "bmmc_cite", "bmmc_multiome"):
        assert files[name] == {"h5ad"}
    assert files["pbmc68k_reduced"] == files["sim_integration"] == set()


def test_protocol_pins(registry):
    d = registry["datasets"]
    assert d["pbmc10k"]["protocol"]["n_hvg"] == 1200
    assert d["pbmc10k"]["protocol"]["hvg_flavor"] == "seurat_v3"
    assert d["pbmc10k"]["protocol"]["filter_gene_by_counts"] == 3
    for name in ("myeloid", "ms", "hpancreas"):
        assert d[name]["protocol"]["n_hvg"] is None and d[name]["protocol"]["data_is_raw"] is False
    assert d["hpancreas"]["protocol"]["log1p_again"] is False
    assert any("0.0.2" in pin for pin in d["norman"]["pins"])
    simulators = {"sim_integration", "sim_perturbation", "sim_multiome"}
    assert all(d[n]["simulated"] is True for n in simulators)
    assert all(not e.get("simulated", False) for n, e in d.items() if n not in simulators)
    # the demo datasets follow the protocols of the datasets they stand in for
    for key in ("split_method", "split_seed", "train_gene_set_size", "combo_seen2_train_frac"):
        assert d["sim_perturbation"]["protocol"][key] == d["norman"]["protocol"][key], key


def test_every_dataset_states_its_census_exclusion_and_the_hpancreas_query_is_held_out(registry):
    """The leakage contract: each registry dataset says which Census collections hold its cells,
    or why none does; the census rules add them all to the pretraining exclusions."""
    from cellmamba.census import registry_exclusions

    for name, entry in registry["datasets"].items():
        rule = entry["census_exclusion"]
        assert rule.get("collection_dois") or rule.get("dataset_ids") or rule.get("not_in_census"), name
    stated = registry_exclusions(registry["datasets"])
    # the hPancreas query is Xin + Segerstolpe + Lawlor (DATASETS.md 4), its reference Baron + Muraro
    for doi in ("10.1016/j.cmet.2016.08.018", "10.1016/j.cmet.2016.08.020", "10.1101/gr.212720.116",
                "10.1016/j.cels.2016.08.011", "10.1016/j.cels.2016.09.002"):
        assert doi in stated["exclude_collection_dois"]
    assert set(stated["unverified_exclusions"]) <= set(stated["exclude_collection_dois"])
