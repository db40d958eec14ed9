"""fffcpu: fast feedforward networks on the CPU.

NumPy training with hand-written backprop, and log-time hard inference (arXiv 2308.14711, 2311.10770).
"""

from . import datasets, functional, optim, tree
from .engine import warmup
from .info import show_versions
from .io import load, save
from .models import FF, FFF, UltraFFF
from .train import History, TrainingDiverged, train

__version__ = "0.1.0"

__all__ = ["FFF", "FF", "UltraFFF", "train", "History", "TrainingDiverged", "save", "load", "datasets", "functional",
           "optim", "tree", "warmup", "show_versions", "__version__"]

# The scikit-learn estimators are imported on first use, so that `import fffcpu` does not import scikit-learn.
_ESTIMATORS = ("FFFClassifier", "FFFRegressor", "UltraFFFRegressor")


def __getattr__(name):
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_ESTIMATORS))
