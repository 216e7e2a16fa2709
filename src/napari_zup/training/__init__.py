"""Training of the learned methods (``zup train <method>``); torch is imported lazily.

One loop for every learned method: :mod:`.session` (``TrainingSession``, its events, ``train``);
the families plug in their sampler, loss and validation: :mod:`.interp` (film, tsain) and
:mod:`.axial` (niiv, a2i); :mod:`.augment` (``--augment``); :mod:`.cli` (``zup train``).
"""


def train(method, data, **options):
    """See :func:`napari_zup.training.session.train`."""
    from .session import train as _train

    return _train(method, data, **options)
