"""Every option of a localization run, declared once: :class:`LocalizationOptions`.

The API (:func:`~dgtrs_geo.localization.localize`, :class:`~dgtrs_geo.localization.session.Localizer`),
the ``dgtrs-geo`` command's flags and the worker's JSON (``to_json`` / ``from_json``) all read this
one declaration. Each field's ``metadata`` holds what a door needs to show it: ``help``, deprecated
flag ``aliases`` (the flag itself is ``--`` and the name with dashes, :func:`flag_name`), a
``short`` flag, ``nargs``, ``metavar``, ``choices`` (also checked by ``validate``) and the
``commands`` (``index``, ``localize``) it belongs to.

Values are coerced on construction (lists to tuples, numbers from text, so a flag's string or a
JSON list gives the same options); :meth:`LocalizationOptions.validate` checks ranges.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .windows import REFERENCE_SCALES

if TYPE_CHECKING:
    from .raster import Stretch

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MAX_WINDOWS",
    "MIN_WINDOW_PX",
    "OUTPUTS",
    "LocalizationOptions",
    "model_patch_size",
]

#: Files a run can write, by kind.
OUTPUTS = ("heatmap", "polygons", "geojson", "overlay")

#: Polygon thresholds used when ``threshold`` is None, per normalisation.
DEFAULT_THRESHOLDS = {"minmax": 0.5, "cosine": 0.25}

#: Smallest window, in pixels, that scales in metres may give (smaller ones carry no scene).
MIN_WINDOW_PX = 16

#: Plans with more windows than this are refused unless ``force`` is set: days of encoding.
MAX_WINDOWS = 1_000_000

#: Rough encoding rates (windows per second) for the time estimate of a refused plan: a
#: ViT-B/16 on a GPU, and on a CPU (benchmarks/localize.py measured 0.5/s on 2 shared cores).
ENCODE_RATES = {"cuda": 500.0, "mps": 50.0, "cpu": 2.0}

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_NUMBER = r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*"
_BBOX = re.compile(rf"^{_NUMBER}(,{_NUMBER}){{3}}$")

# --- coercion: one function per kind of value, used by __post_init__ --------------------------


def _items(value: Any) -> list[Any]:
    """Split ``"4,3,2"``, ``["4,3", "2"]`` or ``(4, 3, 2)`` into items."""
    if isinstance(value, str):
        value = [value]
    items: list[Any] = []
    for item in value:
        items += [p for p in item.split(",") if p.strip()] if isinstance(item, str) else [item]
    return items


def _number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise ValueError("not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("not a number") from None
    return int(number) if number.is_integer() else number


def _numbers(value: Any) -> tuple[int | float, ...]:
    return tuple(_number(v) for v in _items([value] if isinstance(value, int | float) else value))


def _ints(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    numbers = _numbers(value)
    if any(not isinstance(n, int) for n in numbers):
        raise ValueError("not whole numbers")
    return tuple(int(n) for n in numbers)


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v).strip() for v in _items(value))


def _optional(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else kind(value)


def _real(value: Any) -> float:
    return float(_number(value))


def _whole(value: Any) -> int:
    number = _number(value)
    if not isinstance(number, int):
        raise ValueError("not a whole number")
    return number


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _stretch(value: Any) -> str | Stretch:
    if isinstance(value, str):
        return value
    # Imported here: rasterio is heavy and the command line builds its flags from this module.
    from .raster import Stretch

    if isinstance(value, Stretch):
        return value
    if isinstance(value, Mapping):
        return Stretch(tuple(map(float, value["low"])), tuple(map(float, value["high"])))
    raise ValueError("expected 'auto', 'none', a Stretch or {'low': [...], 'high': [...]}")


def _aoi(value: Any) -> tuple[float, ...] | str | None:
    if value is None or isinstance(value, Path):
        return None if value is None else str(value)
    if isinstance(value, str):
        return tuple(float(v) for v in value.split(",")) if _BBOX.match(value) else value
    return tuple(float(v) for v in value)


def _path(value: Any) -> str | None:
    return None if value is None or str(value) == "" else str(value)


def _option(
    default: Any,
    help: str,
    convert: Callable[[Any], Any],
    *,
    commands: tuple[str, ...] = ("index", "localize"),
    **cli: Any,
) -> Any:
    """Declare a field: its default, help text, coercion and how a command line shows it."""
    return field(
        default=default, metadata={"help": help, "convert": convert, "commands": commands, **cli}
    )


# --- the options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalizationOptions:
    """Options of one localization run; defaults are the one place defaults live.

    Attributes:
        scales: window sizes, in ``scale_unit`` (the published recipe: 256, 512, 768 px).
        scale_unit: ``"px"`` or ``"m"`` (converted with the raster's ground sample distance).
        bands: 1-based bands read as R, G, B, or one band read three times (default 1, 2, 3).
        stretch: ``"auto"`` (2-98 percentile stretch for non-uint8 data), ``"none"`` or a
            :class:`~dgtrs_geo.localization.raster.Stretch`.
        aoi: ``(minx, miny, maxx, maxy)`` in the raster's CRS, or a vector file path.
        reference: reproduce the published SeLo map recipe (an index of its own).
        jpeg_roundtrip: in reference mode, also the authors' JPEG save and re-read.
        min_valid: windows with a smaller share of valid (not nodata) pixels are skipped.
        normalise: ``"minmax"`` (each map to [0, 1]) or ``"cosine"`` (raw cosine similarity).
        smooth: Gaussian sigma in metres (pixels without a CRS); None: a quarter of the smallest
            window; 0: off.
        threshold: score a cell needs to be inside a polygon (None: 0.5 min-max, 0.25 cosine).
        cell: heatmap cell side in raster pixels (None: a sixteenth of the smallest window).
        outputs: files to write: heatmap, polygons, geojson, overlay.
        out_dir: folder of the outputs (None: write nothing).
        index_dir: folder of embedding indexes (None: next to the raster, else the cache).
        rebuild: encode again even if a fitting index exists.
        batch_size: windows per forward (None: chosen for the device, halved on out-of-memory).
        num_workers: reader processes (None: 2 on GPU, 0 on CPU).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, for a model given by name.
        force: run plans of more than :data:`MAX_WINDOWS` windows.

    """

    scales: tuple[float, ...] = _option(
        REFERENCE_SCALES, "window sizes in --scale-unit", _numbers, nargs="+", metavar="SIZE"
    )
    scale_unit: str = _option("px", "unit of --scales", str, choices=("px", "m"))
    bands: tuple[int, ...] | None = _option(
        None, "1-based bands read as R G B, or one band (default 1 2 3)", _ints, nargs="+",
        metavar="BAND",
    )  # fmt: skip
    stretch: str | Stretch = _option(
        "auto", "8-bit stretch: 2-98 percentiles of non-uint8 data, or none", _stretch,
        choices=("auto", "none"),
    )  # fmt: skip
    aoi: tuple[float, ...] | str | None = _option(
        None, "area of interest: minx,miny,maxx,maxy in the raster's CRS, or a vector file", _aoi,
        metavar="BBOX|FILE",
    )  # fmt: skip
    reference: bool = _option(
        False, "the published SeLo map recipe, exactly", _boolean, aliases=("--reference-mode",)
    )
    jpeg_roundtrip: bool = _option(
        False,
        "reference mode: the authors' JPEG save and re-read",
        _boolean,
        commands=("localize",),
    )
    min_valid: float = _option(
        0.5, "skip windows with a smaller share of valid (not nodata) pixels", _real
    )
    normalise: str = _option(
        "minmax", "minmax: each map to [0, 1]; cosine: raw cosine similarity", str,
        choices=("minmax", "cosine"), commands=("localize",),
    )  # fmt: skip
    smooth: float | None = _option(
        None, "Gaussian sigma in metres (default: a quarter of the smallest window; 0: off)",
        _optional(_real), commands=("localize",),
    )  # fmt: skip
    threshold: float | None = _option(
        None, "score a cell needs to be in a polygon (default 0.5 minmax, 0.25 cosine)",
        _optional(_real), commands=("localize",),
    )  # fmt: skip
    cell: int | None = _option(
        None, "heatmap cell side in raster pixels (default: smallest window / 16)",
        _optional(_whole), commands=("localize",),
    )  # fmt: skip
    outputs: tuple[str, ...] = _option(
        ("heatmap", "polygons", "overlay"), "files to write", _strings, nargs="+",
        choices=OUTPUTS, commands=("localize",),
    )  # fmt: skip
    out_dir: str | None = _option(
        None, "output folder", _path, short="-o", aliases=("--output",), metavar="DIR",
        commands=("localize",),
    )  # fmt: skip
    index_dir: str | None = _option(
        None, "embedding index folder (default: next to the raster, else the cache)", _path,
        metavar="DIR",
    )  # fmt: skip
    rebuild: bool = _option(False, "encode again even if a fitting index exists", _boolean)
    batch_size: int | None = _option(
        None, "windows per forward (default: by device, halved on out-of-memory)",
        _optional(_whole),
    )  # fmt: skip
    num_workers: int | None = _option(
        None, "reader processes (default: 2 on GPU, 0 on CPU)", _optional(_whole)
    )
    device: str = _option("auto", "auto, cpu, cuda, cuda:N or mps", str)
    force: bool = _option(False, f"run plans of more than {MAX_WINDOWS:,} windows", _boolean)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            try:
                converted = item.metadata["convert"](value)
            except (TypeError, ValueError, KeyError) as error:
                raise InputError(
                    f"option {item.name} ({flag_name(item.name)}) cannot be {value!r}: {error}"
                ) from None
            object.__setattr__(self, item.name, converted)

    # --- serialisation ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Return every option as a JSON-able dict (tuples as lists, a Stretch as low/high)."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if hasattr(value, "to_json"):  # a Stretch
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            out[item.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalizationOptions:
        """Return options from :meth:`to_json`'s dict; missing keys take their defaults.

        Raises:
            InputError: if ``data`` is not an object, has unknown keys (named) or a value of the
                wrong kind.

        """
        if not isinstance(data, Mapping):
            raise InputError(f"options must be a JSON object, got {type(data).__name__}")
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(
                f"unknown option(s) {', '.join(unknown)}: the options are {', '.join(sorted(names))}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> LocalizationOptions:
        """Return a copy with ``changes`` applied (keyword names are field names)."""
        return dataclasses.replace(self, **changes)

    # --- checks -------------------------------------------------------------------------------

    def validate(self, model: Any = None) -> LocalizationOptions:
        """Check every value's range; return ``self`` so calls chain.

        Args:
            model: the model that will run, if known: pixel scales must be at least its patch.

        Raises:
            InputError: naming each option out of range, its flag and the accepted values.

        """
        problems = [p for p in self._problems(model) if p]
        if problems:
            raise InputError("invalid option(s): " + "; ".join(problems))
        return self

    def _problems(self, model: Any) -> list[str]:
        return [
            self._check_choices(),
            self._check_scales(model_patch_size(model)),
            self._check_bands(),
            self._check_aoi(),
            _check_range(self, "min_valid", 0.0, 1.0),
            _check_range(self, "smooth", 0.0, math.inf, "metres; 0 turns smoothing off"),
            self._check_threshold(),
            _check_range(self, "cell", 1, math.inf, "pixels"),
            _check_range(self, "batch_size", 1, math.inf),
            _check_range(self, "num_workers", 0, math.inf),
            "" if _DEVICE.match(self.device) else _say("device", self.device, "auto, cpu, cuda, cuda:N or mps"),
        ]  # fmt: skip

    def _check_choices(self) -> str:
        problems = []
        for item in dataclasses.fields(self):
            choices = item.metadata.get("choices")
            value = getattr(self, item.name)
            if choices is None or hasattr(value, "to_json"):  # a Stretch has no choices
                continue
            values = value if isinstance(value, tuple) else (value,)
            bad = [v for v in values if v not in choices]
            if bad:
                problems.append(_say(item.name, bad[0], "one of " + ", ".join(choices)))
        return "; ".join(problems)

    def _check_scales(self, patch: int | None) -> str:
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            return _say("scales", list(self.scales), "positive window sizes")
        if self.scale_unit == "px" and patch is not None and min(self.scales) < patch:
            return _say(
                "scales", min(self.scales), f"at least the model's {patch} px patch (in pixels)"
            )
        return ""

    def _check_bands(self) -> str:
        if self.bands is None:
            return ""
        if len(self.bands) not in (1, 3) or min(self.bands) < 1:
            return _say("bands", list(self.bands), "one or three 1-based band numbers")
        return ""

    def _check_aoi(self) -> str:
        match self.aoi:
            case None:
                return ""
            case str() if Path(self.aoi).expanduser().is_file():
                return ""
            case str():
                return (
                    f"aoi (--aoi) {self.aoi!r} is neither an existing vector file nor "
                    "minx,miny,maxx,maxy"
                )
            case (minx, miny, maxx, maxy) if minx < maxx and miny < maxy:
                return ""
        return _say("aoi", list(self.aoi), "(minx, miny, maxx, maxy) with min < max")

    def _check_threshold(self) -> str:
        if self.threshold is None:
            return ""
        norm = "minmax" if self.reference else self.normalise
        low = 0.0 if norm == "minmax" else -1.0
        return _check_range(self, "threshold", low, 1.0, f"for {norm} maps")

    def check_plan_size(self, windows: int, raster: str, device: Any = "cpu") -> None:
        """Refuse a plan of more than :data:`MAX_WINDOWS` windows unless ``force`` is set.

        Raises:
            InputError: with the count, an estimated encoding time and the ways out.

        """
        if windows <= MAX_WINDOWS or self.force:
            return
        kind = str(getattr(device, "type", device)).split(":")[0]
        rate = ENCODE_RATES.get(kind, ENCODE_RATES["cpu"])
        raise InputError(
            f"the plan for {raster} has {windows:,} windows, about {_duration(windows / rate)} of "
            f"encoding at {rate:g} windows/s (a ViT-B/16 on {kind}): use larger scales, an area "
            "of interest (--aoi), or --force (force=True) to run it anyway"
        )


def model_patch_size(model: Any) -> int | None:
    """Return the model's ViT patch side in pixels, or None when it is not known."""
    size = getattr(model, "patch_size", None)
    if size is None:
        visual = getattr(getattr(model, "clip", None), "visual", None)
        size = getattr(visual, "patch_size", None)
    if isinstance(size, tuple | list):
        size = size[0]
    return int(size) if isinstance(size, int | float) else None


def flag_name(name: str) -> str:
    """Return the command-line flag of option ``name`` (``out_dir`` -> ``--out-dir``)."""
    return "--" + name.replace("_", "-")


def _say(name: str, value: Any, accepted: str) -> str:
    return f"{name} ({flag_name(name)}) must be {accepted}, got {value!r}"


def _check_range(
    options: LocalizationOptions, name: str, low: float, high: float, note: str = ""
) -> str:
    value = getattr(options, name)
    if value is None or (math.isfinite(value) and low <= value <= high):
        return ""
    span = f">= {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
    return _say(name, value, span + (f" ({note})" if note else ""))


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def option_fields(command: str | None = None) -> list[dataclasses.Field[Any]]:
    """Return the option fields (those of ``command`` only, when given), in declaration order."""
    return [
        item
        for item in dataclasses.fields(LocalizationOptions)
        if command is None or command in item.metadata["commands"]
    ]
