"""LocalizationOptions: one declaration, JSON round trip, range checks, and the CLI built from it."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from dgtrs_geo.cli import build_parser, main
from dgtrs_geo.errors import InputError
from dgtrs_geo.localization import options as options_module
from dgtrs_geo.localization.options import LocalizationOptions, option_fields
from dgtrs_geo.localization.raster import Stretch

FIELDS = [
    "scales", "scale_unit", "bands", "stretch", "aoi", "reference", "jpeg_roundtrip", "min_valid",
    "normalise", "smooth", "threshold", "cell", "outputs", "out_dir", "index_dir", "rebuild",
    "batch_size", "num_workers", "device", "force",
]  # fmt: skip


def test_fields_are_the_agreed_names_with_documented_defaults() -> None:
    assert [f.name for f in dataclasses.fields(LocalizationOptions)] == FIELDS
    defaults = LocalizationOptions()
    assert defaults.scales == (256, 512, 768) and defaults.scale_unit == "px"
    assert defaults.outputs == ("heatmap", "polygons", "overlay")
    assert (defaults.normalise, defaults.min_valid, defaults.device) == ("minmax", 0.5, "auto")
    assert defaults.smooth is None and defaults.threshold is None and defaults.force is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.smooth = 3.0  # type: ignore[misc]


def test_json_round_trip_and_coercion() -> None:
    options = LocalizationOptions(
        scales=["32", 64.0], bands="4,3,2", aoi="1,2,3.5,4e1", stretch=Stretch((1, 2, 3), (9, 9, 9)),
        outputs="geojson", smooth="12.5", cell="4",
    )  # fmt: skip
    assert options.scales == (32, 64) and options.bands == (4, 3, 2)
    assert options.aoi == (1.0, 2.0, 3.5, 40.0) and options.outputs == ("geojson",)
    assert options.smooth == 12.5 and options.cell == 4
    payload = json.loads(json.dumps(options.to_json()))
    assert payload["stretch"] == {"low": [1.0, 2.0, 3.0], "high": [9.0, 9.0, 9.0]}
    assert payload["scales"] == [32, 64] and payload["aoi"] == [1.0, 2.0, 3.5, 40.0]
    assert LocalizationOptions.from_json(payload) == options
    assert LocalizationOptions.from_json({}) == LocalizationOptions()
    # A path AOI stays a path; lists and tuples give equal options.
    assert LocalizationOptions(aoi="fields.gpkg").aoi == "fields.gpkg"
    assert LocalizationOptions(bands=[1]) == LocalizationOptions(bands=(1,))


def test_from_json_refuses_unknown_keys_and_wrong_kinds() -> None:
    with pytest.raises(
        InputError, match=r"unknown option\(s\) extent, output_dir: the options are aoi"
    ):
        LocalizationOptions.from_json({"extent": [0, 0, 1, 1], "output_dir": "x", "smooth": 1})
    with pytest.raises(InputError, match=r"option batch_size \(--batch-size\) cannot be 'many'"):
        LocalizationOptions.from_json({"batch_size": "many"})
    with pytest.raises(InputError, match=r"option cell \(--cell\) cannot be 2.5"):
        LocalizationOptions(cell=2.5)
    with pytest.raises(InputError, match=r"option rebuild \(--rebuild\) cannot be 'yes'"):
        LocalizationOptions.from_json({"rebuild": "yes"})
    with pytest.raises(InputError, match="must be a JSON object"):
        LocalizationOptions.from_json([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        (
            {"smooth": -100},
            "smooth (--smooth) must be >= 0 (metres; 0 turns smoothing off), got -100",
        ),
        (
            {"threshold": math.nan},
            "threshold (--threshold) must be between 0 and 1 (for minmax maps), got nan",
        ),
        ({"threshold": 1.5}, "threshold (--threshold) must be between 0 and 1"),
        ({"threshold": -1.5, "normalise": "cosine"}, "between -1 and 1 (for cosine maps)"),
        ({"min_valid": 1.2}, "min_valid (--min-valid) must be between 0 and 1"),
        ({"scales": [0, 256]}, "scales (--scales) must be positive window sizes"),
        ({"scales": [math.inf]}, "scales (--scales) must be positive window sizes"),
        ({"cell": 0}, "cell (--cell) must be >= 1"),
        ({"batch_size": 0}, "batch_size (--batch-size) must be >= 1"),
        ({"num_workers": -1}, "num_workers (--num-workers) must be >= 0"),
        (
            {"outputs": ["heatmap", "pdf"]},
            "outputs (--outputs) must be one of heatmap, polygons, geojson, overlay, got 'pdf'",
        ),
        ({"normalise": "softmax"}, "normalise (--normalise) must be one of minmax, cosine"),
        ({"scale_unit": "km"}, "scale_unit (--scale-unit) must be one of px, m"),
        ({"stretch": "linear"}, "stretch (--stretch) must be one of auto, none"),
        ({"bands": [1, 2]}, "bands (--bands) must be one or three 1-based band numbers"),
        ({"bands": [0, 1, 2]}, "bands (--bands) must be one or three"),
        ({"aoi": [3, 0, 1, 1]}, "aoi (--aoi) must be (minx, miny, maxx, maxy) with min < max"),
        ({"aoi": "nowhere.gpkg"}, "neither an existing vector file nor minx,miny,maxx,maxy"),
        ({"device": "gpu"}, "device (--device) must be auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_validate_names_each_option_out_of_range(changes: dict, words: str) -> None:
    with pytest.raises(InputError) as caught:
        LocalizationOptions(**changes).validate()
    assert words in str(caught.value)


def test_validate_accepts_edges_and_reports_every_problem() -> None:
    LocalizationOptions(
        smooth=0, threshold=0, min_valid=1, num_workers=0, device="cuda:1"
    ).validate()
    LocalizationOptions(normalise="cosine", threshold=-1).validate()
    # Reference maps are min-max maps, whatever ``normalise`` says.
    with pytest.raises(InputError, match="for minmax maps"):
        LocalizationOptions(reference=True, normalise="cosine", threshold=-0.5).validate()
    with pytest.raises(InputError) as caught:
        LocalizationOptions(smooth=-1, cell=0).validate()
    assert "smooth (--smooth)" in str(caught.value) and "cell (--cell)" in str(caught.value)


def test_scales_under_the_models_patch_are_refused(tiny_model) -> None:
    # The tiny ViT has 8 px patches (tests/conftest.py, DGTRS-tiny.json).
    assert options_module.model_patch_size(tiny_model) == 8
    LocalizationOptions(scales=[8, 64]).validate(tiny_model)
    with pytest.raises(InputError, match=r"at least the model's 8 px patch .*got 4"):
        LocalizationOptions(scales=[4, 64]).validate(tiny_model)
    # In metres the check waits for the raster's ground sample distance (see the session tests).
    LocalizationOptions(scales=[4], scale_unit="m").validate(tiny_model)
    # A model without a known patch size is not checked.
    assert options_module.model_patch_size(object()) is None


def test_plans_of_millions_of_windows_need_force() -> None:
    options = LocalizationOptions()
    options.check_plan_size(options_module.MAX_WINDOWS, "scene.tif", "cpu")
    with pytest.raises(InputError) as caught:
        options.check_plan_size(2_000_000, "scene.tif", "cpu")
    # 2e6 windows at 2 windows/s: 1e6 s, 11.6 days.
    message = str(caught.value)
    assert "scene.tif has 2,000,000 windows, about 12 days of encoding at 2 windows/s" in message
    assert "--force" in message and "--aoi" in message
    with pytest.raises(InputError, match=r"about 67 minutes of encoding at 500 windows/s"):
        options.check_plan_size(2_000_000, "scene.tif", "cuda:0")
    LocalizationOptions(force=True).check_plan_size(2_000_000, "scene.tif", "cpu")


def _subparser(name: str):
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices[name]


@pytest.mark.parametrize("command", ["localize", "index"])
def test_cli_flags_are_generated_from_the_fields(command: str) -> None:
    parser = _subparser(command)
    flags = {a.dest: a for a in parser._actions if a.help != "==SUPPRESS=="}
    expected = [f.name for f in option_fields(command)]
    assert set(expected) <= set(flags)
    for item in option_fields(command):
        action = flags[item.name]
        assert "--" + item.name.replace("_", "-") in action.option_strings
        assert item.metadata["help"] in action.help
    # Index-time options only: query-time ones are not offered by ``index``.
    assert ("threshold" in flags) is (command == "localize")
    assert ("out_dir" in flags) is (command == "localize")


def _options_of(argv: list[str]) -> LocalizationOptions:
    from dgtrs_geo.cli import _options_from_args

    args = build_parser().parse_args(["localize", "r.tif", "q", "-o", "out", *argv])
    return _options_from_args(args, "localize")


def test_cli_values_become_the_same_options(capsys) -> None:
    assert _options_of([]) == LocalizationOptions(out_dir="out")
    assert _options_of(["--bands", "4,3,2"]).bands == (4, 3, 2)
    assert _options_of(["--bands", "4", "3", "2"]).bands == (4, 3, 2)
    assert _options_of(["--scales", "64", "128", "--scale-unit", "m"]).scales == (64, 128)
    assert _options_of(["--smooth", "0", "--reference", "--rebuild"]).reference is True
    # 0.1 spellings still work, with a note naming the new one.
    old = _options_of(["--reference-mode", "--output", "elsewhere", "--geojson", "--no-overlay"])
    assert old.reference is True and old.out_dir == "elsewhere"
    assert old.outputs == ("heatmap", "polygons", "geojson")
    err = capsys.readouterr().err
    assert "--reference-mode is deprecated and will be removed in 0.3: use --reference" in err
    assert "--output is deprecated" in err and "use --out-dir" in err


def test_cli_refuses_out_of_range_values_in_one_line(tmp_path, capsys) -> None:
    base = ["localize", str(tmp_path / "r.tif"), "q", "-o", str(tmp_path / "o")]
    for flags, words in [
        (["--smooth", "-100"], "smooth (--smooth) must be >= 0"),
        (["--threshold", "nan"], "threshold (--threshold) must be between 0 and 1"),
        (
            ["--num-workers", "two"],
            "option num_workers (--num-workers) cannot be 'two': not a number",
        ),
        (["--outputs", "tif"], "outputs (--outputs) must be one of"),
    ]:
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dgtrs-geo localize: error: ")
        assert words in err
    assert not (tmp_path / "o").exists()


def test_evaluate_workers_flag_is_now_num_workers(capsys) -> None:
    base = ["evaluate", "all", "--model", "m", "-o", "out"]
    assert build_parser().parse_args(base).num_workers == 0
    assert build_parser().parse_args([*base, "--num-workers", "3"]).num_workers == 3
    assert build_parser().parse_args([*base, "--workers", "2"]).num_workers == 2
    assert (
        "--workers is deprecated and will be removed in 0.3: use --num-workers"
        in capsys.readouterr().err
    )
