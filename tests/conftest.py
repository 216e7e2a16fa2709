"""Fixtures shared by the napari test modules; the ``gpu`` marker's skip."""
import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device (one place, one
    reason; ``-m gpu`` runs just them on a GPU machine)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device here (gpu marker)")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during a test."""
    from napari.utils.notifications import notification_manager

    got = []

    def keep(n):
        got.append(n.message)

    notification_manager.notification_ready.connect(keep)
    yield got
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture
def viewer_with_sample(make_napari_viewer):
    """A viewer holding the anisotropic FIB-SEM sample (33 x 192 x 192, z step 40 nm)."""
    from napari_zup._sample_data import anisotropic_sample

    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    layer = viewer.add_image(data, **kw)
    return viewer, layer


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tiny trainings (two cores shared with the engine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
