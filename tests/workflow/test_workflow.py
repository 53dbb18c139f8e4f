"""The workflow: lint, dry-runs of both configs (the paper one through the slurm profile),
the profile's resource entries, conda env files, and the demo data path end to end."""
from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(*args, cwd=REPO, timeout=600, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_lint_is_clean():
    proc = _snakemake("--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Congratulations" in out, out[-4000:]


def test_dry_run_demo():
    # --forceall: the whole DAG whatever results/ of this checkout already holds
    out = _snakemake("-n", "--cores", "2", "--forceall", "--quiet", "rules").stdout
    for rule in ("build_demo_census", "census_plan", "census_download", "qc", "gene_stats", "tokenize", "token_manifest",
                 "pretrain", "finetune_annotation", "finetune_integration", "perturbation_split",
                 "finetune_perturbation", "baseline_perturbation", "train_multiomics", "baseline_multiomics",
                 "perturbation_table", "multiomics_table"):
        assert rule in out, f"demo DAG lacks rule {rule}"


def test_dry_run_paper_through_slurm_profile():
    """`snakemake -n --profile slurm all` as users type it; conda replaced (no conda on CI machines).
    The profile's job groups put the per-shard chain into a few dozen Slurm jobs, so the cluster
    sees a few hundred jobs rather than ~3,000."""
    proc = _snakemake("-n", "--profile", "slurm", "all", "--sdm", "env-modules")
    out = proc.stdout + proc.stderr
    assert "census_download" in out and "tokenize" in out, out[-3000:]
    assert "build_demo_census" not in out, "the paper config must not build the demo store"
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    n_shards, n_tok = paper["census"]["n_shards"], len(paper["tokenize"]["tokenizers"])
    table = {}  # the job stats table: rule -> count
    for line in out[out.index("Job stats:"):].splitlines()[3:]:
        if len(line.split()) != 2 or not line.split()[1].isdigit():
            break
        table[line.split()[0]] = int(line.split()[1])
    assert table.pop("total") == sum(table.values()), table
    # each shard is a job of each per-shard rule
    assert table["census_download"] == table["qc"] == n_shards and table["tokenize"] == n_shards * n_tok
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    size = {g: int(n) for g, n in (c.split("=", 1) for c in profile["group-components"])}
    n_groups = {g: out.count(f"Group job {g} ") for g in size}
    assert n_groups == {"shard": -(-n_shards // size["shard"]), "tokens": -(-n_shards * n_tok // size["tokens"])}
    snakefile = (REPO / "Snakefile").read_text()
    block = snakefile[snakefile.index("localrules:") + len("localrules:"):].split("\n\n")[0]
    local = {r.strip() for r in block.replace("\n", ",").split(",") if r.strip()} & set(table)
    assert {"all", "download_dataset", "annotation_table"} <= local, local
    submitted = (sum(table.values()) - sum(table[r] for r in local) - 2 * n_shards - n_shards * n_tok
                 + sum(n_groups.values()))
    assert submitted < 700, (submitted, table)


_CONDA_EXES = ("conda", "mamba", "micromamba")


def _path_without_conda(tmp_path: Path) -> str:
    """$PATH with no conda/mamba on it: a directory holding one is replaced by links to its other entries."""
    dirs = []
    for i, d in enumerate(p for p in os.environ.get("PATH", "").split(os.pathsep) if p):
        if not any(os.access(Path(d) / exe, os.X_OK) for exe in _CONDA_EXES):
            dirs.append(d)
            continue
        shadow = tmp_path / f"path{i}"
        shadow.mkdir()
        for entry in Path(d).iterdir():
            if entry.name not in _CONDA_EXES:
                (shadow / entry.name).symlink_to(entry)
        dirs.append(str(shadow))
    return os.pathsep.join(dirs)


def test_readme_dry_run_works_without_conda(tmp_path):
    """README's `snakemake -n --profile slurm all`, as typed, on a machine without conda: the profile
    keeps `software-deployment-method: conda` for real runs but leaves it out of a dry-run where no
    conda is on PATH (Snakemake 9 otherwise runs `conda info` to hash the envs even for a dry-run)."""
    readme = (REPO / "README.md").read_text()
    assert "snakemake -n --profile slurm all " in readme, "README's dry-run line changed: update this test"
    path = _path_without_conda(tmp_path)
    assert shutil.which("conda", path=path) is None and shutil.which("mamba", path=path) is None
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONDA", "MAMBA", "BASH_FUNC_conda", "BASH_FUNC_mamba"))}
    env.update(PATH=path, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*SNAKEMAKE, "-n", "--profile", "slurm", "all"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "conda info" not in out, out[-4000:]
    jobs = {job.split(":", 1)[0].strip() for job in out.split("\nrule ")[1:]}
    assert {"pretrain", "finetune_annotation", "finetune_integration", "finetune_perturbation"} <= jobs, sorted(jobs)


def test_unknown_config_key_is_refused():
    proc = _snakemake("-n", "--cores", "1", "--config", "bogus_key=1", check=False)
    assert proc.returncode != 0
    assert "bogus_key" in proc.stdout + proc.stderr


def test_slurm_profile_names_only_existing_rules():
    """Snakemake ignores set-resources entries for rules that do not exist: catch typos here."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert (REPO / "slurm").resolve() == (REPO / "profiles/slurm").resolve()
    assert profile["configfile"] == "config/paper.yaml"
    assert profile["executor"] == "slurm"
    # sacct is the status command unless a site opts into squeue (README, "On a Slurm cluster")
    assert profile.get("slurm-status-command", "sacct") == "sacct"
    proc = _snakemake("--list-rules", "--profile", "slurm", "--sdm", "env-modules")
    rules = set(proc.stdout.split())
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    unknown = named - rules
    assert not unknown, f"profiles/slurm/config.yaml names rules that do not exist: {sorted(unknown)}"


@functools.lru_cache(maxsize=1)
def _job_rules() -> tuple[tuple[str, Path | None, Path | None], ...]:
    """(name, conda env file, script) of every rule that runs something (named targets excluded)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    with SnakemakeApi() as api:
        wf = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                          snakefile=REPO / "Snakefile", workdir=REPO)
        found = []
        for rule in wf._workflow.rules:
            if not rule.output:  # named targets (all, corpus, pretrained) run nothing
                continue
            basedir = Path(str(rule.basedir))
            env = (basedir / str(rule.conda_env)).resolve() if rule.conda_env else None
            script = (basedir / str(rule.script)).resolve() if rule.script else None
            found.append((rule.name, env, script))
    return tuple(found)


def _conda_specs(path: Path) -> dict[str, str]:
    """{package name: version} of an env file, conda and pip sections together (pip names as given)."""
    from rattler import MatchSpec

    specs = {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(dep, str):
            spec = MatchSpec(dep)
            specs[spec.name.normalized] = str(spec.version or "").lstrip("=")
        else:
            for req in dep["pip"]:
                name, _, ver = req.partition("==")
                specs[name.strip().lower()] = ver.strip()
    return specs


def test_every_rule_that_runs_something_writes_a_benchmark_beside_its_log():
    """Snakemake's ``benchmark:`` (wall time, peak memory, CPU) for every job, at its log's path
    with ``.benchmark.tsv``: a user's own run gives the cost table's inputs (issue 26)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    with SnakemakeApi() as api:
        wf = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                          snakefile=REPO / "Snakefile", workdir=REPO)
        rules = [r for r in wf._workflow.rules if r.output]
        missing = [r.name for r in rules if not r.benchmark]
        assert not missing, f"rules without benchmark: {missing}"
        for r in rules:
            (log,) = [str(x) for x in r.log]
            assert str(r.benchmark) == log.removesuffix(".log") + ".benchmark.tsv", (r.name, str(r.benchmark), log)
    assert len(rules) >= 30


def test_catalog_files_describe_the_usage_and_every_config_key_group():
    """The Snakemake workflow catalog's files: .snakemake-workflow-catalog.yml with the profile flag,
    conda and the report; config/README.md naming every top-level key group of the schema."""
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert "--profile slurm" in catalog["mandatory-flags"]["flags"] and catalog["mandatory-flags"]["desc"]
    assert catalog["software-stack-deployment"]["conda"] is True and catalog["report"] is True
    readme = (REPO / "config" / "README.md").read_text()
    groups = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]
    missing = [g for g in groups if f"`{g}`" not in readme]
    assert not missing, f"config/README.md does not describe {missing}"
    assert "paper.yaml" in readme and "user_datasets" in readme


def test_every_rule_has_a_parsing_conda_env():
    """Every rule (except named targets) names a conda env file that exists, parses and is pinned."""
    from rattler import MatchSpec

    checked = 0
    for name, path, _ in _job_rules():
        assert path, f"rule {name} names no conda env"
        assert path.is_file(), f"rule {name}: conda env {path} does not exist"
        env = yaml.safe_load(path.read_text())
        assert env.get("channels") and "nodefaults" in env["channels"], f"{path}: needs channels incl. nodefaults"
        assert set(env["channels"]) <= {"conda-forge", "bioconda", "nodefaults"}, f"{path}: {env['channels']}"
        for dep in env["dependencies"]:
            if isinstance(dep, str):
                MatchSpec(dep)  # raises on a malformed spec
                assert "=" in dep or dep == "pip", f"{path}: {dep!r} is not pinned"
            else:  # the pip section: exact pins
                for req in dep["pip"]:
                    assert "==" in req, f"{path}: pip requirement {req!r} is not pinned"
        checked += 1
    assert checked >= 5


def test_gpu_env_pins_a_mamba_ssm_the_fused_path_runs_with():
    """envs/gpu.yaml must pin a mamba-ssm the fused Mamba2 path (models/_fused.py) is enabled and
    tested for: with any other version it switches itself off and a cluster run silently takes
    mamba_ssm's slower composition."""
    from cellmamba.models._fused import TESTED_MAMBA

    specs = _conda_specs(REPO / "envs" / "gpu.yaml")
    pinned = specs.get("mamba-ssm", "").rstrip(".*")
    assert pinned, "envs/gpu.yaml pins no mamba-ssm"
    assert pinned in TESTED_MAMBA, (f"envs/gpu.yaml pins mamba-ssm={pinned}, but the fused path is enabled only for "
                                    f"{TESTED_MAMBA} (cellmamba.models._fused.TESTED_MAMBA)")


def test_envs_with_scib_carry_a_cxx_compiler_for_lisi():
    """scib's iLISI / cLISI call a compiled helper whose shipped binary needs a newer glibc than many
    clusters have (GLIBC_2.38); cellmamba.metrics._lisi_build compiles it from scib's source with
    g++, so an env that runs scib must hold a C++ compiler, or LISI cannot be computed there."""
    envs = {env for _, env, _ in _job_rules() if env}
    with_scib = [env for env in sorted(envs) if "scib" in _conda_specs(env)]
    assert with_scib, "no conda env carries scib"
    for env in with_scib:
        specs = _conda_specs(env)
        assert {"cxx-compiler", "gxx"} & set(specs), f"{env.name} runs scib but has no C++ compiler (cxx-compiler)"


# What each env must carry besides pyproject's [project].dependencies: the optional-dependency
# groups (extras) and extra distributions of the stage its rules run. Keys are env file names.
_STAGE_NEEDS = {
    "data.yaml": (["census"], []),
    "gpu.yaml": (["cuda"], ["scikit-learn", "scikit-misc", "matplotlib"]),  # pretraining + fine-tuning
    "eval.yaml": (["eval"], ["matplotlib"]),  # datasets, baselines, metrics, tables, figures
}
# PyPI name -> the conda names that provide it
_CONDA_NAMES = {
    "torch": ("pytorch", "pytorch-cpu", "pytorch-gpu"),
    "igraph": ("python-igraph",),
    "tiledbsoma": ("tiledbsoma-py",),
    "matplotlib": ("matplotlib-base", "matplotlib"),
}


def test_conda_envs_carry_every_runtime_dependency_of_the_package():
    """Conda jobs import cellmamba from this checkout's src/ (not an install), so each env a rule uses
    must hold every [project].dependencies entry of pyproject.toml at a version inside its range,
    plus its stage's extras: a dependency added to the package without its envs fails here."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    envs = {env for _, env, _ in _job_rules() if env}
    assert envs, "no rule names a conda env"
    for env in sorted(envs):
        extras, others = _STAGE_NEEDS.get(env.name, ([], []))
        needed = [Requirement(r) for r in project["dependencies"]]
        for extra in extras:
            needed += [Requirement(r) for r in project["optional-dependencies"][extra]]
        needed += [Requirement(r) for r in others]
        specs = _conda_specs(env)
        for req in needed:
            names = _CONDA_NAMES.get(req.name, (req.name,))
            have = [n for n in names if n in specs]
            assert have, f"{env.name} lacks {req.name} (as conda {' or '.join(names)}), needed by cellmamba"
            pinned = specs[have[0]].rstrip(".*")
            assert pinned and req.specifier.contains(Version(pinned), prereleases=True), (
                f"{env.name}: {have[0]}={pinned} is outside pyproject's {req}")


def _imports_cellmamba(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "cellmamba"
    return isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "cellmamba" for alias in node.names)


def test_workflow_scripts_put_this_checkouts_package_first():
    """Each rule's script puts <checkout>/src first on sys.path before importing cellmamba, so a
    `--sdm conda` job (whose env has no cellmamba installed) imports this checkout's package.
    Checked by running each script's lines before its first cellmamba import in a Python without
    site-packages (-I -S: no install, no editable .pth) with snakemake.scriptdir as Snakemake sets it."""
    scripts = sorted({script for _, _, script in _job_rules() if script})
    assert scripts, "no rule runs a script"
    for script in scripts:
        assert script.is_file(), f"{script} does not exist"
        source = script.read_text()
        body = ast.parse(source).body
        first = next((i for i, node in enumerate(body) if _imports_cellmamba(node)), None)
        assert first is not None, f"{script.name} never imports cellmamba"
        prefix = "\n".join(ast.get_source_segment(source, node) for node in body[:first])
        # Snakemake's scriptdir is the rule file's directory joined with the relative script path
        scriptdir = str(REPO / "rules" / ".." / script.parent.relative_to(REPO))
        probe = (f"import types\nsnakemake = types.SimpleNamespace(scriptdir={scriptdir!r})\n{prefix}\n"
                 "import cellmamba\nprint(cellmamba.__file__)")
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True,
                              cwd="/", timeout=60)
        assert proc.returncode == 0, f"{script.name}: cellmamba not importable without an install:\n{proc.stderr}"
        assert Path(proc.stdout.strip()).resolve() == REPO / "src" / "cellmamba" / "__init__.py", proc.stdout


GPU_RULES = {"pretrain", "finetune_annotation", "finetune_integration", "finetune_perturbation", "train_multiomics",
             "gene_pair_scores", "rank_reconstruction", "embed_trajectory"}


def test_slurm_profile_gives_gpu_rules_gpus_and_cpu_rules_none():
    """Paper dry-run through the profile: pretraining and fine-tuning jobs ask for a GPU; the data
    path's, the baselines' and the metrics' jobs do not."""
    out = _snakemake("-n", "--profile", "slurm", "results/pretrain/scmamba2/model", "results/qc/gene_stats.tsv",
                     "results/annotation/myeloid/scmamba2/seed0/metrics.csv",
                     "results/annotation/myeloid/logreg/seed0/metrics.csv",
                     "results/integration/pbmc10k/protocol/genemamba_transformer/seed1/metrics.csv",
                     "results/integration/pbmc10k/all_genes/harmony/seed0/metrics.csv",
                     "results/perturbation/norman/genemamba/seed0/metrics.csv",
                     "results/perturbation/norman/additive/seed0/metrics.csv",
                     "results/multiomics/bmmc_multiome/scmamba/seed0/metrics.csv",
                     "results/multiomics/bmmc_cite/pca_cca/seed0/metrics.csv",
                     "results/genes/pair_scores/genemamba.csv", "results/genes/rank_reconstruction/genemamba/metrics.csv",
                     "results/trajectory/hsmm/genemamba/seed0/embedding.h5ad",
                     "--sdm", "env-modules").stdout
    jobs = re.split(r"\n\s*rule ", out)[1:]  # a group job's jobs are indented
    assert jobs, out[-2000:]
    seen = set()
    for job in jobs:
        name = job.split(":", 1)[0].strip()
        resources = next((s for s in job.splitlines() if s.strip().startswith("resources:")), "")
        gpus = [int(t.split("=")[1]) for t in resources.replace(",", " ").split() if t.startswith("gpu=")]
        if name in GPU_RULES:
            assert gpus == [1], resources
        else:
            assert not gpus or gpus == [0], f"{name} asks for a GPU: {resources}"
        seen.add(name)
    assert GPU_RULES | {"census_download", "qc", "gene_stats", "prepare_dataset", "download_dataset",
                        "baseline_annotation", "baseline_integration", "score_annotation", "score_integration",
                        "perturbation_split", "baseline_perturbation", "score_perturbation", "baseline_multiomics",
                        "score_multiomics"} <= seen


def test_user_integration_dataset_without_batch_key_names_the_config_key(tmp_path):
    """A user integration dataset without batch_key fails at DAG time, naming the config key to set."""
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(yaml.safe_dump({"evaluation": {"user_datasets": {"mine": {
        "path": str(tmp_path / "mine.h5ad"), "task": "integration", "label_key": "cell_type"}}}}))
    proc = _snakemake("-n", "--cores", "1", "--configfile", str(overlay), check=False)
    assert proc.returncode != 0
    assert "evaluation.user_datasets.mine.batch_key is not set" in proc.stdout + proc.stderr
