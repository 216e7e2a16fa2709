"""The ``zup`` sub-commands other than ``reconstruct`` and their shared helpers;
:mod:`napari_zup.cli` is the entry point (parser, ``main``, the one error boundary)."""
