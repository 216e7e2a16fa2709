"""Reconstruction methods: one module each, all behind :class:`~napari_zup.methods.base.Method`."""
from .base import (
    Method,
    MethodInfo,
    RenderResult,
    create_method,
    get_info,
    method_infos,
    method_names,
    register,
)

__all__ = [
    "Method",
    "MethodInfo",
    "RenderResult",
    "create_method",
    "get_info",
    "method_infos",
    "method_names",
    "register",
]
