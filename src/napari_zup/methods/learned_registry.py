"""Registration of the learned methods, by lazy "module:Class" factories so that torch and
the models are imported only when a learned method is actually used (``zup methods`` and
the classical path stay fast)."""
from .base import MethodInfo, register  # noqa: F401

#: The learned methods' MethodInfo, one copy: the classes (torch modules) use these.
LEARNED_INFOS: dict[str, MethodInfo] = {}

# Each learned-method module adds its own `register(MethodInfo(...), "napari_zup.methods.X:Cls")`
# line here.
LEARNED_INFOS["niiv"] = MethodInfo(name="niiv", sample_cost=9.0, kind="axial", description="Neural field (niiv): restores xz/yz planes at any continuous z-scale; self-supervised on lateral patches (zup train niiv).", fractional=True, min_slices=3, needs_checkpoint=True, devices=("cpu", "cuda", "mps"))
register(LEARNED_INFOS["niiv"], "napari_zup.methods.niiv:Niiv")
LEARNED_INFOS["film"] = MethodInfo(name="film", shows_flows=True, sample_cost=5.0, texture=True, kind="pair", description="Learned FILM-style interpolation: shared feature pyramid, bidirectional coarse-to-fine flow to both knots, U-Net fusion; any factor (t-conditioned).", fractional=True, min_slices=2, needs_checkpoint=True, devices=("cpu", "cuda", "mps"))
register(LEARNED_INFOS["film"], "napari_zup.methods.film:Film")
LEARNED_INFOS["a2i"] = MethodInfo(name="a2i", sample_cost=60.0, kind="axial", description="Axial-to-isotropic U-shaped window-attention transformer (a2i): restores cubic-interpolated xz/yz planes; self-supervised (zup train a2i).", fractional=True, min_slices=3, needs_checkpoint=True, devices=("cpu", "cuda", "mps"))
register(LEARNED_INFOS["a2i"], "napari_zup.methods.a2i:A2I")
LEARNED_INFOS["tsain"] = MethodInfo(name="tsain", shows_flows=True, sample_cost=5.5, texture=True, kind="pair", description="Learned TSAIN-style interpolation: deformable (PCD) alignment, residual spatial-adaptive blocks, deformable refinement with feedback; any factor (t-conditioned).", fractional=True, min_slices=2, needs_checkpoint=True, devices=("cpu", "cuda", "mps"))
register(LEARNED_INFOS["tsain"], "napari_zup.methods.tsain:Tsain")
