"""Registration of the learned methods, by lazy "module:Class" factories so that torch and
the models are imported only when a learned method is actually used (``zup methods`` and
the classical path stay fast)."""
from .base import MethodInfo, register  # noqa: F401

# Each learned-method module adds its own `register(MethodInfo(...), "napari_zup.methods.X:Cls")`
# line here.
