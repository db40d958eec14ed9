"""The models: parameters, validation, forward/backward, predict/route."""

from .base import Model
from .dense import FF
from .fff import FFF

#: Model classes by name, for ``fffcpu.load``.
MODELS = {cls.__name__: cls for cls in (FF, FFF)}

__all__ = ["Model", "FF", "FFF", "MODELS"]
