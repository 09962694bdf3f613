"""What the desktop drivers (one_click.py, catalog_desktop.py) share: waiting on the real
application, laying out its window, and reading its canvas.

Imported by a driver that ``qgis --code`` runs; the launcher (benchmarks/qgis_catalog.py
``run_driver``) puts this folder on ``sys.path`` first.
"""

import json
import time
import traceback

from qgis.core import QgsApplication, QgsPointXY
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QDockWidget


def wait(condition, timeout, what):
    """Process events until ``condition()`` holds; TimeoutError after ``timeout`` seconds."""
    start = time.monotonic()
    while not condition():
        QgsApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def pause(seconds):
    """Process events for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.05)


def arrange(main_window, dock, width, height, layers_width, dock_width):
    """Size the main window, hide the browser and share the width between Layers and the dock."""
    main_window.resize(width, height)
    dock.show()
    browser = main_window.findChild(QDockWidget, "Browser")
    if browser is not None:
        browser.hide()
    layers_panel = main_window.findChild(QDockWidget, "Layers")
    if layers_panel is not None:
        main_window.resizeDocks(
            [layers_panel, dock], [layers_width, dock_width], Qt.Orientation.Horizontal
        )
    pause(1.5)


def render(canvas, path):
    """Redraw the canvas, wait for it, save its picture to ``path`` and return it."""
    canvas.refreshAllLayers()
    pause(0.3)
    wait(lambda: not canvas.isDrawing(), 60, "the canvas")
    pause(0.3)
    image = canvas.grab().toImage()
    image.save(path)
    return image


def heat_samples(canvas, heat, plain, shown, step):
    """Heatmap value and canvas colours, without and with it, every ``step`` canvas pixels."""
    to_map = canvas.mapSettings().mapToPixel()
    rows = []
    for y in range(5, plain.height() - 5, step):
        for x in range(5, plain.width() - 5, step):
            value, ok = heat.dataProvider().sample(QgsPointXY(to_map.toMapCoordinates(x, y)), 1)
            if ok:
                rows.append([value, plain.pixel(x, y), shown.pixel(x, y)])
    return rows


def drive(steps, result):
    """Run ``steps(out)`` once QGIS is up, write ``out`` to the file ``result``, quit QGIS.

    ``out`` gets ``ok`` when the steps ran through, else ``error`` with the traceback.
    """

    def run():
        out = {}
        try:
            steps(out)
            out["ok"] = True
        except Exception:  # noqa: BLE001 - reported to the test
            out["error"] = traceback.format_exc()
        with open(result, "w") as handle:
            json.dump(out, handle, indent=1, default=str)
        QgsApplication.exit(0)

    QTimer.singleShot(2000, run)
