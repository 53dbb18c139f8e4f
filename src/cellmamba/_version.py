"""The installed cellmamba version (a module of its own: every module may import it without the
package root, which loads submodules lazily)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellmamba")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
