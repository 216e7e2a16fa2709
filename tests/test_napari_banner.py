"""The "this layer has no voxel size" banner, in a real viewer under Xvfb: a TIFF opened with
napari's builtin reader (scale 1, 1, 1), the banner, its two buttons. The reader preference
the second button sets is napari's own setting: every test restores it."""
import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_zup.io import write_volume

from ._data import SAMPLE1, need

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def crop():
    return tifffile.imread(need(SAMPLE1))[:12, :64, :80]


@pytest.fixture
def reader_settings():
    """napari's reader preferences, restored after the test whatever it did."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    before = dict(plugins.extension2reader)
    yield plugins
    plugins.extension2reader = before
    assert dict(get_settings().plugins.extension2reader) == before


def _banner_shown(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.voxel_banner.isHidden(), timeout=5000)
    return widget.voxel_banner


def _click(qtbot, button):
    qtbot.waitUntil(button.isVisible, timeout=5000)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_builtin_tiff_gets_banner_and_apply_sets_scale_units_and_factor(
        make_napari_viewer, qtbot, tmp_path, crop, reader_settings):
    from napari_zup._qt import ReconstructWidget

    src = write_volume(tmp_path / "fib.tif", crop, (40.0, 10.0, 10.0))
    viewer = make_napari_viewer(show=True)  # clicks land on visible buttons only
    layer, = viewer.open(str(src), plugin="napari")  # what "OK" in the Choose-reader dialog does
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)
    widget = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(widget)
    banner = _banner_shown(qtbot, widget)
    text = banner.message.text()
    assert "The file says 40 x 10 x 10 nm" in text and "this layer has no voxel size" in text
    assert widget.factor_spin.value() == pytest.approx(2.0)  # nothing to pre-fill it from
    _click(qtbot, banner.apply_button)
    assert tuple(layer.scale) == pytest.approx((40.0, 10.0, 10.0))
    assert tuple(str(u) for u in layer.units) == ("nanometer",) * 3
    assert banner.isHidden()
    assert widget.factor_spin.value() == pytest.approx(4.0)  # pre-filled from the new scale
    np.testing.assert_array_equal(np.asarray(layer.data), crop)  # the data is untouched
    assert reader_settings.extension2reader.get("*.tif") != "napari-zup"  # no setting changed


def test_prefer_button_makes_napari_zup_the_tiff_reader(
        make_napari_viewer, qtbot, tmp_path, crop, reader_settings):
    from napari_zup._qt import CompareWidget

    reader_settings.extension2reader = {k: v for k, v in reader_settings.extension2reader.items()
                                        if k not in ("*.tif", "*.tiff", "*.zarr", "*.zarr/")}
    src = write_volume(tmp_path / "a.tif", crop, (40.0, 10.0, 10.0))
    viewer = make_napari_viewer(show=True)
    layer, = viewer.open(str(src), plugin="napari")
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    banner = _banner_shown(qtbot, widget)
    assert "Preferences > Plugins" in banner.undo_hint.text()
    assert banner.prefer_button.isEnabled()
    _click(qtbot, banner.prefer_button)
    e2r = reader_settings.extension2reader
    assert {e2r.get(p) for p in ("*.tif", "*.tiff", "*.zarr", "*.zarr/")} == {"napari-zup"}
    assert not banner.prefer_button.isEnabled()  # done: says so instead
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)  # this button changes the setting only
    # now dropping a file or a Zarr folder picks napari-zup, with no dialog, and keeps the
    # voxel size (exactly what QtViewer.dropEvent does; viewer.open() in Python defaults to
    # plugin="napari" and ignores the preference)
    from qtpy.QtCore import QUrl

    for name in ("b.tif", "c.zarr"):
        other = write_volume(tmp_path / name, crop[:6], (50.0, 4.0, 4.0))
        viewer.window._qt_viewer._open_from_list_of_urls_data(
            [QUrl.fromLocalFile(str(other))], stack=False, choose_plugin=False)
        opened = viewer.layers[-1]
        assert opened.source.path == str(other) and opened.source.reader_plugin == "napari-zup"
        assert tuple(opened.scale) == pytest.approx((50.0, 4.0, 4.0))


def test_no_banner_when_the_layer_has_its_voxel_size_or_the_file_has_none(
        make_napari_viewer, qtbot, tmp_path, crop, reader_settings):
    from napari_zup._qt import EvaluateWidget, FlowWidget, ReconstructWidget, TrainWidget

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, crop)  # no voxel size recorded
    src = write_volume(tmp_path / "fib.tif", crop, (40.0, 10.0, 10.0))
    viewer = make_napari_viewer()
    viewer.open(str(plain), plugin="napari")
    widget = ReconstructWidget(viewer)
    qtbot.wait(50)
    assert widget.voxel_banner.isHidden()
    good, = viewer.open(str(src), plugin="napari-zup")
    widget.layer_combo.set_layer(good)
    assert widget.layer_combo.layer() is good and widget.voxel_banner.isHidden()
    bare, = viewer.open(str(src), plugin="napari")
    widget.layer_combo.set_layer(bare)
    assert not widget.voxel_banner.isHidden()
    bare.scale = (40.0, 10.0, 10.0)  # set by hand: the banner goes
    assert widget.voxel_banner.isHidden()
    bare.scale = (1.0, 1.0, 1.0)
    assert not widget.voxel_banner.isHidden()
    # every widget has the banner (through the shared DockWidget base)
    for cls in (EvaluateWidget, FlowWidget, TrainWidget):
        other = cls(viewer)
        other.layer_combo.set_layer(bare)
        assert "40 x 10 x 10 nm" in _banner_shown(qtbot, other).message.text()
