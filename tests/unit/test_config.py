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
    # evaluation data must be excluded: every registry dataset states how (test_datasets_registry), and
    # an exclusion that matches nothing fails the reproduction's plan
    assert census["strict_exclusions"] is True
    assert cfg["demo_census"]["build"] is False
    for recipe in ("genemamba", "scmamba2", "scmamba"):
        assert cfg["models"][recipe]["d_model"] >= 512 and cfg["models"][recipe]["n_layers"] >= 12
    assert cfg["tokenize"]["rank"]["max_len"] == 2048
    assert cfg["tokenize"]["binned"]["n_bins"] == 51


def _schema_defaults(node, schema):
    """key -> default (or the marker NO_DEFAULT) of an object schema node, $refs followed."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return {k: v.get("default", NO_DEFAULT) for k, v in node["properties"].items()}


NO_DEFAULT = object()


def _field_defaults(cls):
    import dataclasses

    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def _mirror(sub_tree: dict, cls, *, from_rule=(), renamed=None, workflow=()):
    """The schema sub-tree's keys (renamed, the workflow's own left out) are the dataclass's fields
    less those the rule fills in (``from_rule``); each default is the field's, an override without
    a default (backend) inheriting the run's top-level default."""
    schema = _load("schema.yaml")
    renamed = renamed or {}
    keys = {renamed.get(k, k): v for k, v in sub_tree.items() if k not in workflow}
    fields = _field_defaults(cls)
    assert set(keys) == set(fields) - set(from_rule), (cls.__name__, set(keys) ^ (set(fields) - set(from_rule)))
    top = schema["properties"]["backend"]["default"]
    for key, default in keys.items():
        default = top if default is NO_DEFAULT and key == "backend" else default
        assert default == fields[key], (cls.__name__, key, default, fields[key])


def test_each_schema_sub_tree_mirrors_its_dataclass():
    from cellmamba.tasks import FinetuneConfig
    from cellmamba.tasks.multiomics import MultiomicsConfig
    from cellmamba.tasks.perturb import PerturbConfig
    from cellmamba.train.pretrain import WORKFLOW_KEYS, PretrainConfig

    schema = _load("schema.yaml")
    ev = schema["properties"]["evaluation"]["properties"]
    for task in ("annotation", "integration"):
        _mirror(_schema_defaults(ev[task]["properties"]["finetune"], schema), FinetuneConfig, from_rule=("seed", "init"))
    _mirror(_schema_defaults(ev["perturbation"]["properties"]["finetune"], schema), PerturbConfig, from_rule=("seed", "init"))
    _mirror(_schema_defaults(ev["multiomics"]["properties"]["train"], schema), MultiomicsConfig,
            from_rule=("arch", "d_model", "n_layers", "d_state", "merge", "merge_every", "patch_size", "seed"))
    # the patch tokenizer: annotation is the rule's input (rule gene_positions or a path), not a setting
    from cellmamba.tokenize import PatchConfig

    tok = schema["properties"]["tokenize"]["properties"]
    _mirror(_schema_defaults(tok["patch"], schema), PatchConfig, workflow=("annotation",))
    # a pretraining job reads models.<recipe> and pretrain whole (PretrainConfig.from_workflow)
    model = _schema_defaults(schema["$defs"]["model"], schema)
    pretrain = _schema_defaults(schema["properties"]["pretrain"], schema)
    assert not set(model) & set(pretrain)
    _mirror({**model, **pretrain}, PretrainConfig, renamed={"genemamba_lm": "lm"},
            workflow=("tokenizer", "micro_batch_size", *WORKFLOW_KEYS),
            from_rule=("recipe", "match_backbone", "num_workers"))
