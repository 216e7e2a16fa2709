"""napari widgets of napari-zup (Qt). They only collect inputs, start the Qt-free core
(:mod:`napari_zup.engine`, :mod:`napari_zup.evaluation`, :mod:`napari_zup.flow`) in worker
threads and show its results as layers. Adding a widget = one module here + one entry in
napari.yaml."""
from ._compare import CompareWidget
from ._evaluate import EvaluateWidget
from ._flow import FlowWidget
from ._reconstruct import ReconstructWidget
from ._train import TrainWidget

__all__ = ["CompareWidget", "EvaluateWidget", "FlowWidget", "ReconstructWidget", "TrainWidget"]
