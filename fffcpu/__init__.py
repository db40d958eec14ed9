"""fffcpu: fast feedforward networks on the CPU.

NumPy training with hand-written backprop, and log-time hard inference (arXiv 2308.14711, 2311.10770).
"""

from . import datasets, functional, optim, tree
from .io import load, save
from .models import FF, FFF
from .train import History, TrainingDiverged, train

__version__ = "0.1.0"

__all__ = ["FFF", "FF", "train", "History", "TrainingDiverged", "save", "load", "datasets", "functional",
           "optim", "tree", "__version__"]
