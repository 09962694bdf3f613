"""The plugin object: menu actions, the dock, the Processing provider, the worker's lifetime."""

from __future__ import annotations

import os
from typing import List, Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .backend import manager
from .processing.provider import DgtrsGeoProvider
from .tools import plugin_name, setup_logger, teardown_logger, tr

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")
MENU = "&DGTRS-Geo"


class DgtrsGeoPlugin:
    """QGIS plugin entry object.

    Args:
        iface: the QGIS interface.

    """

    def __init__(self, iface) -> None:  # noqa: ANN001
        self.iface = iface
        self.provider: Optional[DgtrsGeoProvider] = None
        self.dock = None
        self.actions: List[QAction] = []
        self._logger_name = plugin_name()
        setup_logger(self._logger_name, iface)

    def initProcessing(self) -> None:  # noqa: N802
        """Register the Processing provider (also called by qgis_process, without a GUI)."""
        if self.provider is None:
            self.provider = DgtrsGeoProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        """Create the dock, the menu and the toolbar button."""
        self.initProcessing()
        from .gui.dock import DgtrsGeoDock

        self.dock = DgtrsGeoDock(self.iface)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        show = QAction(QIcon(ICON), tr("Find in imagery (DGTRS-Geo)"), self.iface.mainWindow())
        show.setCheckable(True)
        show.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(show.setChecked)
        settings = QAction(tr("Backend settings..."), self.iface.mainWindow())
        settings.triggered.connect(self.show_settings)
        for action in (show, settings):
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)
        self.iface.addToolBarIcon(show)

    def show_settings(self) -> None:
        """Open the backend settings dialog."""
        from .gui.settings_dialog import BackendSettingsDialog

        BackendSettingsDialog(self.iface.mainWindow()).exec()

    def unload(self) -> None:
        """Remove everything the plugin added and stop its worker."""
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
        self.actions = []
        if self.dock is not None:
            self.dock.close_down()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        manager.shutdown()
        teardown_logger(self._logger_name)
