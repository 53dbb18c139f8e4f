"""cellmamba: Mamba single-cell foundation models, reproduced end to end and measured honestly.

The package does the work of the Snakemake workflow in this repository; it never imports
snakemake and never reads YAML itself (configuration arrives as dataclasses / parameters).
"""

from ._version import __version__

from .errors import CellmambaError, CorruptFileError, InputError

__all__ = ["__version__", "CellmambaError", "InputError", "CorruptFileError", "embed"]


def __getattr__(name: str):
    # `embed` pulls in torch; loading it on first use keeps `import cellmamba` light
    if name == "embed":
        from .embedding import embed

        globals()["embed"] = embed
        return embed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
