"""The models: parameters, validation, forward/backward, predict/route."""

from .base import Model
from .dense import FF
from .fff import FFF
from .ultra import BFloat16UltraFFF, UltraFFF

#: Model classes by name, for ``fffcpu.load``.
MODELS = {cls.__name__: cls for cls in (FF, FFF, UltraFFF)}

__all__ = ["Model", "FF", "FFF", "UltraFFF", "BFloat16UltraFFF", "MODELS"]
