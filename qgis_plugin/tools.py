"""qgis-plugin-tools: vendored inside the release zip, pip-installed in a development checkout.

The plugin's logging (QGIS log panel, message bar), settings and ``tr()`` all come from here.
"""

try:
    from .qgis_plugin_tools.tools.custom_logging import setup_logger, teardown_logger
    from .qgis_plugin_tools.tools.i18n import tr
    from .qgis_plugin_tools.tools.messages import MessageBarLogger
    from .qgis_plugin_tools.tools.resources import plugin_name
    from .qgis_plugin_tools.tools.settings import get_setting, set_setting
except ImportError:
    from qgis_plugin_tools.tools.custom_logging import setup_logger, teardown_logger
    from qgis_plugin_tools.tools.i18n import tr
    from qgis_plugin_tools.tools.messages import MessageBarLogger
    from qgis_plugin_tools.tools.resources import plugin_name
    from qgis_plugin_tools.tools.settings import get_setting, set_setting

__all__ = [
    "MessageBarLogger",
    "get_setting",
    "plugin_name",
    "set_setting",
    "setup_logger",
    "teardown_logger",
    "tr",
]
