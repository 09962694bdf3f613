"""Import a QGIS plugin package with every ``qgis`` module replaced by permissive stand-ins.

Run by an interpreter other than QGIS's (tests use it with Python 3.9, the oldest Python a
supported QGIS ships): module bodies, class bodies, decorators and eagerly evaluated
annotations all execute, so any syntax or runtime construct that this Python lacks fails
the import. Usage: ``python import_without_qgis.py <plugins folder> <package name>``.
"""

import importlib
import importlib.abc
import importlib.machinery
import pkgutil
import sys
import types


class _StandInMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in(name)

    def __or__(cls, other):
        return cls

    __ror__ = __or__


class _StandIn(metaclass=_StandInMeta):
    """Any QGIS or Qt name: a class to subclass, a callable, a decorator, an enum value."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) else _StandIn()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn()

    def __or__(self, other):
        return self

    __ror__ = __or__


def _stand_in(name):
    return _StandInMeta(name, (_StandIn,), {})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _stand_in(name)
        setattr(self, name, value)
        return value


class _QgisFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "qgis" or fullname.startswith("qgis."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def main(plugins_dir, package):
    sys.meta_path.insert(0, _QgisFinder())
    sys.path.insert(0, plugins_dir)
    root = importlib.import_module(package)
    imported = [package]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if ".qgis_plugin_tools." in info.name + ".":
            continue  # vendored: imported as far as the plugin itself uses it
        importlib.import_module(info.name)
        imported.append(info.name)
    vendored = [name for name in sys.modules if ".qgis_plugin_tools." in name]
    print(
        "python {}.{} imported {} plugin modules and {} vendored ones".format(
            *sys.version_info[:2], len(imported), len(vendored)
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
