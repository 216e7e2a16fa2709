"""``python -m napari_zup.launch``: napari with the anisotropic FIB-SEM sample open and the
Reconstruct widget docked (``make run``). ``--isotropic`` also opens the ground truth and
docks the Evaluate widget; a path opens that stack instead of the sample."""
from __future__ import annotations

import argparse


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", nargs="?", help="a TIFF or Zarr stack to open instead of the sample")
    p.add_argument("--isotropic", action="store_true",
                   help="also open the isotropic original and dock the Evaluate widget")
    args = p.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-zup")
    if args.path:
        viewer.open(args.path, plugin="napari-zup")
    else:
        if args.isotropic:
            viewer.open_sample("napari-zup", "isotropic")
        viewer.open_sample("napari-zup", "anisotropic")
    viewer.window.add_plugin_dock_widget("napari-zup", "Reconstruct")
    if args.isotropic:
        viewer.window.add_plugin_dock_widget("napari-zup", "Evaluate")
    napari.run()
    return viewer


if __name__ == "__main__":
    main()
