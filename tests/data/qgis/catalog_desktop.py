"""Drive the QGIS desktop through a catalog: Build catalog (Processing), two searches from the
dock's Catalog tab, then *Localize here* on the best result.

Run by ``qgis --code`` (see benchmarks/qgis_catalog.py), with ``CONFIG`` (a JSON file path)
defined before this text. The plugin is installed from the zip in a fresh profile; its backend
is ``DGTRS_GEO_PYTHON``. Build catalog runs as the toolbox runs it, in a background
``QgsProcessingAlgRunnerTask``; the searches and the localization click the dock's buttons. The
backend is restarted between the build and the first search, so the first search pays for the
backend's start and the model's load as after a QGIS restart. Screenshots of the main window,
canvas renders with and without the result layers, the dock's own picture and the pixel
positions of the results are written for the test that checks the pictures; what was seen and
the times go to ``config["result"]``; then QGIS quits.
"""

import json
import os
import time

import qgis.utils
from desktop_kit import arrange, drive, heat_samples, pause, render, wait
from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsPointXY,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRenderContext,
)
from qgis.PyQt.QtCore import QPoint

config = json.load(open(CONFIG))  # noqa: F821 - defined by the launcher before this text
shots = config["shots"]


def build_catalog():
    """Run Build catalog in a background task, as the toolbox does; return (seconds, outputs)."""
    algorithm = QgsApplication.processingRegistry().algorithmById("dgtrsgeo:buildcatalog")
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    context.setProject(QgsProject.instance())
    outcome = {}
    params = {"FOLDER": config["scenes"], "MODEL": config["checkpoint"], "DEVICE": 1,
              "SCALES": "32, 64", "SCALE_UNIT": 1, "DATE_FROM": r"\d{4}-\d{2}-\d{2}",
              "OUTPUT": config["catalog"]}  # fmt: skip
    task = QgsProcessingAlgRunnerTask(algorithm, params, context, feedback)
    task.executed.connect(lambda ok, results: outcome.update(ok=ok, results=results))
    start = time.monotonic()
    QgsApplication.taskManager().addTask(task)
    wait(lambda: "ok" in outcome, 900, "Build catalog")
    seconds = time.monotonic() - start
    if not outcome["ok"]:
        raise RuntimeError("Build catalog failed")
    return seconds, {k: v for k, v in outcome["results"].items() if k != "CHILD_RESULTS"}


def timed(start_job, panel):
    """Seconds from the click to the result shown, and of those the backend's start."""
    start = time.monotonic()
    task = start_job()
    if task is None:
        raise RuntimeError(panel.dock.status.text())
    wait(lambda: panel.task is None, 600, "the catalog job")
    return time.monotonic() - start, task.start_seconds


def screenshot(main_window, canvas, dock, name):
    """The main window, and where the canvas and the dock are in it."""
    main_window.grab().save(os.path.join(shots, name + ".png"))
    dock.grab().save(os.path.join(shots, name + "-dock.png"))
    spots = {}
    for key, widget in (("canvas", canvas), ("dock", dock)):
        corner = widget.mapTo(main_window, QPoint(0, 0))
        spots[key] = [corner.x(), corner.y(), widget.width(), widget.height()]
    return spots


def outline_points(canvas, layer):
    """Canvas pixels on each result's outline, with the outline colour its score class gives."""
    to_canvas = QgsCoordinateTransform(
        layer.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance()
    )
    to_pixel = canvas.mapSettings().mapToPixel()
    renderer = layer.renderer().clone()
    context = QgsRenderContext.fromMapSettings(canvas.mapSettings())
    renderer.startRender(context, layer.fields())
    points = []
    for feature in layer.getFeatures():
        colour = renderer.symbolForFeature(feature, context).symbolLayer(0).strokeColor()
        ring = feature.geometry().asPolygon()[0]
        for a, b in zip(ring[:-1], ring[1:], strict=True):
            for t in (0.25, 0.5, 0.75):
                point = to_canvas.transform(QgsPointXY(a.x() + t * (b.x() - a.x()),
                                                       a.y() + t * (b.y() - a.y())))  # fmt: skip
                pixel = to_pixel.transform(point)
                points.append([feature["rank"], round(pixel.x()), round(pixel.y()),
                               [colour.red(), colour.green(), colour.blue()]])  # fmt: skip
    renderer.stopRender(context)
    return points


def expand(node):
    """Show ``node`` expanded (toggled: the view may not show a node added expanded as such)."""
    node.setExpanded(False)
    pause(0.2)
    node.setExpanded(True)


def set_visible(layer, visible):
    QgsProject.instance().layerTreeRoot().findLayer(layer.id()).setItemVisibilityChecked(visible)


def add_scenes(iface):
    """The catalog's scenes, in a collapsed group at the bottom: the imagery under the results."""
    root = QgsProject.instance().layerTreeRoot()
    group = root.addGroup("scenes ({})".format(len(config["scene_files"])))
    for path in config["scene_files"]:
        layer = QgsRasterLayer(path, os.path.splitext(os.path.basename(path))[0])
        QgsProject.instance().addMapLayer(layer, False)
        group.addLayer(layer)
    group.setExpanded(False)
    for node in group.findLayers():
        node.setExpanded(False)
    extent = group.findLayers()[0].layer().extent()
    for node in group.findLayers():
        extent.combineExtentWith(node.layer().extent())
    iface.mapCanvas().setExtent(extent)
    return group.name(), extent


def main(out):
    iface = qgis.utils.iface
    main_window = iface.mainWindow()
    dock = qgis.utils.plugins["dgtrs_geo_qgis"].dock
    arrange(main_window, dock, 1280, 800, 250, 440)
    canvas = iface.mapCanvas()
    scenes_group, extent = add_scenes(iface)
    from dgtrs_geo_qgis.backend import manager

    # The backend's start on its own, so that the build's time is the build's.
    start = time.monotonic()
    manager.get_client().start()
    out["backend_start"] = time.monotonic() - start
    seconds, outputs = build_catalog()
    out["build"] = {"seconds": seconds, "outputs": outputs}
    dock.device_combo.setCurrentText("cpu")
    dock.tabs.setCurrentWidget(dock.catalog_panel)
    panel = dock.catalog_panel

    def click_search():
        panel.search_button.click()
        return panel.task

    out["searches"] = []
    manager.shutdown()  # as after a QGIS restart: the first search starts the backend
    panel.set_catalog(outputs["OUTPUT"])
    panel.top.setValue(config["top"])
    layers = []
    for text in config["queries"]:
        panel.query.setPlainText(text)
        seconds, backend = timed(click_search, panel)
        layers.append(panel.layer)
        out["searches"].append(
            {"query": text, "seconds": seconds, "backend_start": backend,
             "shown": panel.seconds,
             "status": dock.status.text(), "rows": len(panel.rows),
             "table_rows": panel.table.rowCount(), "layer": panel.layer.name(),
             "scenes": [row["scene"] for row in panel.rows]}
        )  # fmt: skip
    tree = QgsProject.instance().layerTreeRoot()
    for layer in layers[:-1]:
        set_visible(layer, False)
        tree.findLayer(layer.id()).setExpanded(False)
    ranked = layers[-1]
    expand(tree.findLayer(ranked.id()))  # its score classes in the legend
    iface.messageBar().clearWidgets()
    panel.table.selectRow(0)
    canvas.setExtent(extent)
    shown = render(canvas, os.path.join(shots, "search-shown.png"))
    out["search_shot"] = screenshot(main_window, canvas, dock, "qgis-catalog")
    out["outline"] = outline_points(canvas, ranked)
    set_visible(ranked, False)
    plain = render(canvas, os.path.join(shots, "search-plain.png"))
    out["search_changed"] = shown != plain
    set_visible(ranked, True)

    def click_localize():
        panel.localize_button.click()
        return panel.task

    out["localize"] = {"seconds": timed(click_localize, panel)[0],
                       "status": dock.status.text(),
                       "row": panel.rows[0]}  # fmt: skip
    record = dock.history[0]
    out["localize"]["record"] = record
    from dgtrs_geo_qgis.layers import find_group

    group = find_group(record["id"])
    # The scene with its neighbours around it; in the layer tree, the new group's legends.
    scene = QgsProject.instance().mapLayer(iface.activeLayer().id())
    canvas.setExtent(scene.extent().buffered(scene.extent().width()))
    tree.findGroup(scenes_group).setExpanded(False)
    tree.findLayer(ranked.id()).setExpanded(False)
    for node in (group, *group.findLayers()):
        expand(node)
    iface.messageBar().clearWidgets()
    pause(0.5)
    render(canvas, os.path.join(shots, "localize-shown-all.png"))
    out["localize_shot"] = screenshot(main_window, canvas, dock, "qgis-catalog-localize")
    heat = next(n.layer() for n in group.findLayers() if isinstance(n.layer(), QgsRasterLayer))
    for node in group.findLayers():
        set_visible(node.layer(), node.layer() is heat)
    set_visible(ranked, False)
    heat_shown = render(canvas, os.path.join(shots, "localize-heatmap.png"))
    group.setItemVisibilityChecked(False)
    heat_plain = render(canvas, os.path.join(shots, "localize-plain.png"))
    out["heat_samples"] = heat_samples(canvas, heat, heat_plain, heat_shown, 6)


drive(main, config["result"])
