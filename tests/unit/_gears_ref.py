"""GEARS 0.0.2's own ``gears/data_utils.py`` as a reference for the tests, loaded without its
package ``__init__`` (which, like ``gears/utils.py``, imports torch_geometric & co: not installed).

The four helpers data_utils imports from ``.utils`` are taken from the real utils.py source with
``ast`` and registered under a stub package while data_utils is executed.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

_HELPERS = {"parse_single_pert", "parse_combo_pert", "parse_any_pert", "print_sys"}


def load_gears_data_utils(stub: str, *, needed_for: str):
    """The module, or a visible skip naming ``needed_for`` when the GEARS source is absent."""
    spec = importlib.util.find_spec("gears")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"GEARS (cell-gears 0.0.2) source is not installed: cannot compare with {needed_for}")
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / "data_utils.py").is_file() or not (root / "utils.py").is_file():
        pytest.skip(f"{root} lacks data_utils.py / utils.py (not cell-gears 0.0.2)")
    funcs = [n for n in ast.parse((root / "utils.py").read_text()).body
             if isinstance(n, ast.FunctionDef) and n.name in _HELPERS]
    assert {f.name for f in funcs} == _HELPERS
    package, utils = types.ModuleType(stub), types.ModuleType(f"{stub}.utils")
    package.__path__ = [str(root)]
    utils.__dict__.update({"sys": sys, "np": np})
    exec(compile(ast.Module(body=funcs, type_ignores=[]), str(root / "utils.py"), "exec"), utils.__dict__)
    sys.modules[stub], sys.modules[f"{stub}.utils"] = package, utils
    import scanpy as sc

    verbosity = sc.settings.verbosity
    mod_spec = importlib.util.spec_from_file_location(f"{stub}.data_utils", root / "data_utils.py")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        with warnings.catch_warnings():  # data_utils calls warnings.filterwarnings("ignore") at import
            mod_spec.loader.exec_module(module)
    finally:
        sc.settings.verbosity = verbosity
        sys.modules.pop(stub, None)
        sys.modules.pop(f"{stub}.utils", None)
    return module
