"""Widgets: the dock panel and the backend settings dialog."""
