"""napari sample data: a real FIB-SEM crop (FlyEM medulla, 10 nm isotropic) and the
anisotropic stack made from it by keeping every 4th slice (40 nm z step)."""
from __future__ import annotations

from importlib import resources

SAMPLE_FILE = "flyem_medulla_sample1_crop_10nm.tif"
#: Kept slice step of the anisotropic sample.
SAMPLE_FACTOR = 4
ATTRIBUTION = (
    "FIB-SEM crop of FlyEM medulla training_sample1 (z 60:189, y/x 29:221), Creative Commons "
    "Attribution. Data: FlyEM project, HHMI Janelia Research Campus. Cite: Parag et al. 2015, "
    "PLoS ONE 10(5): e0125825."
)


def sample_path():
    return resources.files("napari_zup") / "data" / SAMPLE_FILE


def _read():
    from .io import read_volume

    with resources.as_file(sample_path()) as p:
        return read_volume(p)


def isotropic_sample():
    """The 129 x 192 x 192 crop at 10 nm (ground truth for the anisotropic sample)."""
    vol = _read()
    meta = {"zup": {"voxel_size": list(vol.voxel_size), "unit": vol.unit,
                    "attribution": ATTRIBUTION, "isotropic": True}}
    return [(vol.data, {"name": "FIB-SEM iso 10nm", "scale": vol.voxel_size,
                        "units": ("nm",) * 3, "axis_labels": ("z", "y", "x"),
                        "metadata": meta}, "image")]


def anisotropic_sample():
    """Every 4th slice of the crop: 33 x 192 x 192, z step 40 nm, y/x 10 nm."""
    vol = _read()
    z, y, x = vol.voxel_size
    data = vol.data[::SAMPLE_FACTOR].copy()
    voxel = (z * SAMPLE_FACTOR, y, x)
    meta = {"zup": {"voxel_size": list(voxel), "unit": vol.unit, "attribution": ATTRIBUTION,
                    "kept_every": SAMPLE_FACTOR,
                    "ground_truth": "File > Open Sample > napari-zup > isotropic original"}}
    return [(data, {"name": "FIB-SEM aniso 40nm", "scale": voxel,
                    "units": ("nm",) * 3, "axis_labels": ("z", "y", "x"),
                    "metadata": meta}, "image")]
