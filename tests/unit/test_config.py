"""The two configs validate, every key is documented, and the paper config inherits nothing."""
from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import yaml
from snakemake.utils import update_config

from conftest import REPO

CONFIG = REPO / "config"


def _load(name):
    return yaml.safe_load((CONFIG / name).read_text())


def _validator():
    return jsonschema.Draft202012Validator(_load("schema.yaml"))


def _leaf_paths(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaf_paths(v, prefix + (k,))
        else:
            yield prefix + (k,)


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def _resolved_paper():
    """What Snakemake runs with `--configfile config/paper.yaml`: paper deep-merged over the default."""
    cfg = copy.deepcopy(_load("config.yaml"))
    update_config(cfg, _load("paper.yaml"))
    return cfg


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_configs_validate(name):
    _validator().validate(_load(name))


def test_schema_forbids_unknown_keys_at_every_level():
    schema = _load("schema.yaml")

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                assert node.get("additionalProperties") is False, f"{where}: additionalProperties must be false"
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(schema, "schema")
    bad = _load("config.yaml")
    bad["tokenize"]["binned"]["n_binz"] = 51
    with pytest.raises(jsonschema.ValidationError, match="n_binz"):
        _validator().validate(bad)


def test_every_demo_key_is_commented():
    lines = (CONFIG / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w]*:", line):
            above = lines[i - 1].strip() if i else ""
            assert "#" in line or above.startswith("#"), f"config/config.yaml:{i + 1}: key without a comment: {line!r}"


def test_paper_config_inherits_nothing_from_the_demo():
    demo, paper = _load("config.yaml"), _load("paper.yaml")
    missing = [".".join(p) for p in _leaf_paths(demo) if not _has(paper, p)]
    assert not missing, f"config/paper.yaml does not set {missing}: the demo's values would leak into it"
    assert _resolved_paper() == paper


def _has(d, path):
    try:
        _get(d, path)
        return True
    except (KeyError, TypeError):
        return False


def test_resolved_paper_config_is_the_full_reproduction():
    cfg = _resolved_paper()
    _validator().validate(cfg)
    census = cfg["census"]
    assert census["census_version"] == "2024-07-01"
    assert census["uri"] is None, "the reproduction reads the public Census"
    assert census["organism"] == "homo_sapiens"
    assert "is_primary_data == True" in census["obs_value_filter"]
    assert census["max_cells"] is None
    assert census["exclude_collection_dois"] or census["exclude_dataset_ids"], "evaluation data must be excluded"
    assert cfg["demo_census"]["build"] is False
    for recipe in ("genemamba", "scmamba2", "scmamba"):
        assert cfg["models"][recipe]["d_model"] >= 512 and cfg["models"][recipe]["n_layers"] >= 12
    assert cfg["tokenize"]["rank"]["max_len"] == 2048
    assert cfg["tokenize"]["binned"]["n_bins"] == 51
