"""Tests written to kill the mutants of dgtrs_geo/evaluation/ that survived the mutation run.

Each test names the contract a user relies on (an error message, a progress bar that obeys
``--no-progress``, a figure's look, a boundary of an input check) and its expected value comes
from the documentation or a computation written here, not from the code under test.
benchmarks/results/mutation-triage.md lists which mutants each test kills and which survivors
are equivalent.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt
from PIL import Image
from torch.utils.data import Dataset, Subset

import dgtrs_geo
from dgtrs_geo.errors import InputError, OutputError

REPO = Path(__file__).resolve().parents[1]

# --- a fake model with known answers ----------------------------------------------------------

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _colour_of(text: str) -> tuple[float, float, float]:
    return next((c for name, c in COLOURS.items() if name in text), (0.3, 0.3, 0.3))


class _Tower:
    def __init__(self, owner: FakeModel) -> None:
        self.owner = owner

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.owner.text_batches.append(len(tokens))
        return torch.tensor([_colour_of(self.owner.texts[int(t)]) for t in tokens[:, 0]])


class FakeModel:
    """Image embedding = normalised mean RGB; text embedding = the colour the text names."""

    model_id = "fake-v1"
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.text_batches: list[int] = []
        self.clip = _Tower(self)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1) / 255

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float().mean(dim=(2, 3)), dim=1)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        start = len(self.texts)
        self.texts.extend(texts)
        return torch.arange(start, start + len(texts))[:, None]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(torch.tensor([_colour_of(t) for t in texts]), dim=1)


class _Scenes(Dataset):
    """Flat-colour 4 x 4 scenes (0..255 floats, as TorchGeo gives them) with labels."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        colour = torch.tensor(list(COLOURS.values())[self.labels[index]]) * 200 + 20
        return {"image": colour.view(3, 1, 1).expand(3, 4, 4).clone(), "label": self.labels[index]}


def _scenes_data(labels: list[int], classnames: list[str] | None = None):
    from dgtrs_geo.evaluation.data import BenchmarkData

    return BenchmarkData(
        name="Toy",
        task="zeroshot",
        dataset=_Scenes(labels),
        key="toy",
        classnames=["red", "green", "blue"] if classnames is None else classnames,
    )


# --- data.py: dataset keys, discovery, pairing and their messages -------------------------------


def _fabricate_airslt(root: Path, boxes: list[tuple[int, int, int, int]]) -> None:
    """One 64 x 64 scene and one query per box (x0, y0, x1, y1), captions "query 0", ..."""
    (root / "imgs").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "imgs" / "s.jpg", format="PNG")
    entries = [
        {
            "caption": f"query {k}",
            "jpg_name": "s.jpg",
            "points": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]],
        }
        for k, (x0, y0, x1, y1) in enumerate(boxes)
    ]
    (root / "annotations" / "anno.json").write_text(json.dumps(entries))


BOXES = [(4, 4, 20, 20), (30, 10, 60, 40), (10, 40, 40, 60)]


def test_airslt_key_names_the_split_all_like_the_classification_sets(tmp_path: Path) -> None:
    from dgtrs_geo.evaluation.data import load_benchmark

    _fabricate_airslt(tmp_path / "AIRSLT", BOXES)
    data = load_benchmark("airslt", str(tmp_path / "AIRSLT"))
    # AIR-SLT has no splits: the whole set is scored, spelled "all" (docstring of load_benchmark).
    assert data.key == f"AIRSLT|{tmp_path / 'AIRSLT'}|all|3"
    assert (data.task, data.classnames, data.pixel_scale) == ("selo", None, 1.0)


def test_image_folder_without_class_folders_says_what_layout_is_expected(tmp_path: Path) -> None:
    from dgtrs_geo.evaluation.data import load_benchmark

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as error:
        load_benchmark("ImageFolder", str(tmp_path / "empty"))
    message = str(error.value)
    assert str(tmp_path / "empty") in message
    assert message.endswith(" AID and ImageFolder datasets need one sub-folder of images per class")


@pytest.fixture
def fake_scenes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Replace SyntheticScenes (2 s for its 500 scenes) by a stand-in recording split and length."""
    from dgtrs_geo import datasets

    made: list[tuple[str, int]] = []

    class Scenes(_Scenes):
        def __init__(self, split: str, length: int) -> None:
            made.append((split, length))
            self.split = split
            super().__init__([0] * length)

    monkeypatch.setattr(datasets, "SyntheticScenes", Scenes)
    return made


def test_resolve_benchmarks_defaults_to_500_synthetic_scenes(fake_scenes) -> None:
    from dgtrs_geo.evaluation.data import resolve_benchmarks

    # docs/evaluation.md: SyntheticScenes is "drawn on the fly (500 test scenes)"; the CLI calls
    # resolve_benchmarks without synthetic_length.
    (data,) = resolve_benchmarks("retrieval", ["SyntheticScenes"], [])
    assert fake_scenes == [("test", 500)] and data.key == "SyntheticScenes||test|500"
    # With a root that has no SyntheticScenes folder, the scenes are still drawn (root ignored).
    (again,) = resolve_benchmarks("retrieval", ["SyntheticScenes"], ["/nowhere"], "val", None, 7)
    assert fake_scenes[-1] == ("val", 7) and again.key == "SyntheticScenes||val|7"


def test_task_all_discovers_the_datasets_of_every_task(tmp_path: Path, fake_scenes) -> None:
    from dgtrs_geo.evaluation.data import resolve_benchmarks

    (tmp_path / "syntheticscenes").mkdir()
    for name, colour in (("harbor", (20, 40, 210)), ("forest", (30, 180, 40))):
        (tmp_path / "ImageFolder" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(tmp_path / "ImageFolder" / name / "a.png")
    found = resolve_benchmarks("all", [], [str(tmp_path)], synthetic_length=3)
    # Published column order: retrieval sets first, then the classification ones.
    assert [(d.name, d.task) for d in found] == [
        ("SyntheticScenes", "retrieval"),
        ("ImageFolder", "zeroshot"),
    ]
    assert fake_scenes == [("test", 3)] and len(found[0].dataset) == 3
    assert found[1].classnames == ["forest", "harbor"]
    assert found[1].key == f"ImageFolder|{tmp_path / 'ImageFolder'}|all|2"
    (only,) = resolve_benchmarks("zeroshot", [], [str(tmp_path)])
    assert only.name == "ImageFolder"


def test_a_named_dataset_missing_from_the_one_root_is_looked_for_in_root_slash_name(
    tmp_path: Path, fake_scenes
) -> None:
    from torchgeo.datasets import DatasetNotFoundError

    from dgtrs_geo.evaluation.data import resolve_benchmarks

    # Two names and one root: each dataset lives in ROOT/<NAME>; neither folder exists here.
    with pytest.raises(DatasetNotFoundError) as error:
        resolve_benchmarks("retrieval", ["SyntheticScenes", "RSITMD"], [str(tmp_path)])
    assert f"root='{tmp_path / 'RSITMD'}'" in str(error.value)
    assert fake_scenes == [("test", 500)]  # the scenes were drawn first, root or not


def test_resolve_benchmarks_messages_say_exactly_what_is_wrong(tmp_path: Path, fake_scenes) -> None:
    from dgtrs_geo.evaluation.data import resolve_benchmarks

    def message(*args) -> str:
        with pytest.raises(InputError) as error:
            resolve_benchmarks(*args)
        return str(error.value)

    assert message("nope", [], []) == (
        "unknown task 'nope'; expected one of ['retrieval', 'zeroshot', 'selo', 'all']"
    )
    assert message("retrieval", [], []) == (
        "name the datasets with --dataset, or give one --root holding them"
    )
    assert message("retrieval", [], ["a", "b"]) == (
        "name the datasets with --dataset, or give one --root holding them"
    )
    assert message("zeroshot", [], [str(tmp_path)]) == (
        "no dataset folder (EuroSAT, RESISC45, UCMerced, AID, ImageFolder) found in "
        f"{str(tmp_path)!r}"
    )
    pairing = (
        "{} datasets but {} roots: give one --root per --dataset, or a single --root holding a "
        "folder per dataset"
    )
    # A dataset that needs files, and no root: refused before anything is read.
    assert message("retrieval", ["RSITMD"], []) == pairing.format(1, 0)
    # Scenes need no root, but three roots for two names do not pair.
    assert message("retrieval", ["SyntheticScenes"] * 2, ["a", "b", "c"]) == pairing.format(2, 3)
    assert fake_scenes == []


# --- embeddings.py: progress bar, cache loading, cache errors -------------------------------


def test_encoding_progress_bar_obeys_the_progress_flag_and_is_cleared(capsys) -> None:
    from dgtrs_geo.evaluation.embeddings import encode_benchmark

    model = FakeModel()
    data = _scenes_data([0, 1, 2])
    encode_benchmark(model, data)  # progress shown by default
    shown = capsys.readouterr().err
    assert "Toy images:" in shown
    # leave=False: the finished bar is wiped (carriage return, blanks, carriage return), so a
    # run's terminal keeps no stale bars; a kept bar would end with a newline.
    assert shown.endswith("\r") and not shown.endswith("\n")
    encode_benchmark(model, data, progress=True)
    assert "Toy images:" in capsys.readouterr().err
    encode_benchmark(model, data, progress=False)
    assert capsys.readouterr().err == ""


def test_runner_passes_the_progress_setting_to_encoding(capsys) -> None:
    from dgtrs_geo.evaluation.runner import EvaluationSettings, evaluate_zeroshot

    model = FakeModel()
    data = _scenes_data([0, 1, 2])
    evaluate_zeroshot(model, data, EvaluationSettings(progress=True, templates=("{}",)))
    assert "Toy images:" in capsys.readouterr().err
    evaluate_zeroshot(model, data, EvaluationSettings(progress=False, templates=("{}",)))
    assert capsys.readouterr().err == ""


def test_cached_embeddings_are_loaded_with_weights_only(tmp_path: Path, monkeypatch) -> None:
    from dgtrs_geo.evaluation.embeddings import encode_benchmark

    model = FakeModel()
    data = _scenes_data([0, 1, 2])
    first = encode_benchmark(model, data, cache_dir=tmp_path, progress=False)
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    again = encode_benchmark(model, data, cache_dir=tmp_path, progress=False)
    # pyproject allows torch >= 2.1; before 2.6 torch.load unpickles anything unless
    # weights_only=True is passed: a planted cache file must never run code (team rule).
    assert len(calls) == 1 and calls[0].get("weights_only") is True
    # Read back as written: a red, a green and a blue scene (220 on one channel, 20 elsewhere).
    expected = F.normalize(torch.tensor([[220.0, 20, 20], [20, 220, 20], [20, 20, 220]]), dim=1)
    torch.testing.assert_close(again["image"], expected)
    assert again.keys() == first.keys() and torch.equal(again["label"], torch.tensor([0, 1, 2]))


def test_an_unwritable_cache_folder_is_an_output_error_naming_the_fix(tmp_path: Path) -> None:
    from dgtrs_geo.evaluation.embeddings import encode_benchmark

    (tmp_path / "file").write_text("not a folder")
    folder = tmp_path / "file" / "fake-v1"
    with pytest.raises(OutputError) as error:
        encode_benchmark(
            FakeModel(), _scenes_data([0]), cache_dir=tmp_path / "file", progress=False
        )
    assert str(error.value) == (
        f"cannot write the embeddings cache {folder} (Not a directory): set DGTRS_GEO_CACHE to a "
        "writable folder, or pass --no-cache"
    )


def test_ctrl_c_just_after_the_rename_stays_a_keyboard_interrupt(
    tmp_path: Path, monkeypatch
) -> None:
    from dgtrs_geo.evaluation.embeddings import encode_benchmark
    from dgtrs_geo.evaluation.report import save_figure

    # Ctrl-C landing right after the temporary file was renamed: the clean-up finds no temporary
    # file to remove, and the user must see the interruption, not a FileNotFoundError.
    rename = os.replace

    def interrupted(source, target):
        rename(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    figure, _ = plt.subplots()
    with pytest.raises(KeyboardInterrupt):
        save_figure(figure, tmp_path / "f.png")
    with pytest.raises(KeyboardInterrupt):
        encode_benchmark(FakeModel(), _scenes_data([0]), cache_dir=tmp_path / "c", progress=False)
    # Both renames happened: the figure and the cache file are there, no temporary file is.
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files[1] == "f.png" and re.fullmatch(r"c/fake-v1/Toy-[0-9a-f]{16}\.pt", files[0])
    assert len(files) == 2


# --- report.py: atomic writes, encodings, the SeLo figure -----------------------------------


def test_an_unwritable_figure_folder_is_an_output_error(tmp_path: Path) -> None:
    from dgtrs_geo.evaluation.report import save_figure

    (tmp_path / "file").write_text("not a folder")
    figure, _ = plt.subplots()
    target = tmp_path / "file" / "figures" / "f.png"
    with pytest.raises(OutputError) as error:
        save_figure(figure, target)
    assert str(error.value) == (
        f"cannot write {target} (Not a directory): choose another output folder"
    )
    assert not plt.fignum_exists(figure.number)


def test_reports_and_templates_are_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    # Under the C locale without coercion, Python's default text encoding is ASCII: text files
    # read or written without an explicit encoding fail on "é" or come out in another encoding.
    (tmp_path / "templates.txt").write_bytes("une image aérienne de {}.\n".encode())
    script = f"""
import locale, sys
from dgtrs_geo.evaluation.report import write_report
from dgtrs_geo.evaluation.templates import read_templates
print(locale.getpreferredencoding(False))
print(ascii(read_templates({str(tmp_path / "templates.txt")!r})))
keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
report = {{
    "models": ["mod\\u00e8le"], "model_ids": {{"mod\\u00e8le": "x"}},
    "datasets": [{{"name": "RSITMD", "task": "retrieval"}}],
    "results": {{"mod\\u00e8le": {{"RSITMD": {{"short": dict.fromkeys(keys, 12.5)}}}}}},
}}
write_report(report, {str(tmp_path / "out")!r})
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    env.update(LC_ALL="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0", PYTHONIOENCODING="utf-8")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    (tmp_path / "script.py").write_text(script, encoding="ascii")
    done = subprocess.run(
        [sys.executable, str(tmp_path / "script.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    encoding, templates = done.stdout.splitlines()[-2:]
    assert "utf" not in encoding.lower()  # the test would prove nothing under a UTF-8 locale
    assert templates == ascii(("une image aérienne de {}.",))
    markdown = (tmp_path / "out" / "results.md").read_bytes().decode("utf-8")
    assert "| modèle | 12.50 |" in markdown.splitlines()


def test_plot_selo_maps_overlays_scale_and_style(tmp_path: Path) -> None:
    from matplotlib import rc_context

    from dgtrs_geo.evaluation.report import plot_selo_maps

    image = np.zeros((2, 2, 3), np.uint8)
    maps = {"fast": np.full((2, 2), 0.5), "reference": np.array([[0.25, 1.0], [0.5, 0.75]])}
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    # Users' matplotlibrc settings must not change the figure: the code sets these itself.
    rc = {"lines.linewidth": 4.0, "figure.titlesize": 20, "image.cmap": "gray"}
    with rc_context(rc):
        figure = plot_selo_maps(image, maps, [square], "a query", max_side=2)
    # A 2-pixel side with max_side 2 needs no subsampling: every pixel is drawn.
    for ax in figure.axes:
        assert ax.images[0].get_array().shape == (2, 2, 3)
        for overlay in ax.images[1:]:
            assert overlay.get_extent() == [0, 2, 2, 0]  # pixel edges, as the image
            assert overlay.get_clim() == (0, 1)  # fixed scale, not the map's own range
            assert overlay.get_cmap().name == "jet" and overlay.get_alpha() == 0.5
        assert ax.get_lines()[0].get_linewidth() == 1.5
    np.testing.assert_array_equal(figure.axes[2].images[1].get_array(), maps["reference"])
    assert figure._suptitle.get_fontsize() == 9
    plt.close(figure)
    # The default max_side is 1024: a 1025-pixel side is drawn every 2nd pixel (ceil(1025/1024)).
    wide = plot_selo_maps(np.zeros((3, 1025, 3), np.uint8), {"fast": np.zeros((3, 1025))}, [])
    assert wide.axes[0].images[0].get_array().shape == (2, 513, 3)
    assert wide.axes[1].images[1].get_array().shape == (2, 513)
    plt.close(wide)


def test_confusion_figure_rates_scale_ticks_and_colour_bar() -> None:
    from matplotlib import rc_context

    from dgtrs_geo.evaluation.zeroshot import plot_confusion_matrix

    # Row-normalised by hand: a class with one sample is [1, 0]; all rates > 0 in the second
    # figure, so an autoscaled colour range would not start at 0.
    with rc_context({"xtick.labelsize": 12, "ytick.labelsize": 12, "image.cmap": "gray"}):
        single = plot_confusion_matrix([[1, 0], [1, 1]], ["a", "b"])
        figure = plot_confusion_matrix([[1, 1], [1, 3]], ["a", "b"])
    np.testing.assert_allclose(single.axes[0].images[0].get_array(), [[1.0, 0.0], [0.5, 0.5]])
    ax = figure.axes[0]
    image = ax.images[0]
    np.testing.assert_allclose(image.get_array(), [[0.5, 0.5], [0.25, 0.75]])
    assert image.get_clim() == (0, 1) and image.get_cmap().name == "Blues"
    for label in ax.get_xticklabels():
        assert (label.get_rotation(), label.get_fontsize()) == (90.0, 7.0)
    assert [label.get_fontsize() for label in ax.get_yticklabels()] == [7.0, 7.0]
    colorbar = image.colorbar  # the bar belongs to this image (same colour map and range)
    assert colorbar is not None and colorbar.ax.get_ylabel() == "share of the true class"
    # fraction=0.046 of the axes' width, next to the matrix with matplotlib's default pad 0.05.
    width = colorbar.ax.get_position(original=True).width
    parent = ax.get_position(original=True).width
    assert width / parent == pytest.approx(0.046 / (1 - 0.046 - 0.05), rel=1e-3)
    plt.close(single)
    plt.close(figure)


# --- retrieval.py: input checks and devices ---------------------------------------------------


def test_image_ranks_stay_on_the_embeddings_device() -> None:
    from dgtrs_geo.evaluation.retrieval import _image_to_text_ranks

    # "meta" tensors stand in for a GPU on a CPU-only machine: mixing them with CPU tensors
    # fails exactly as CUDA and CPU tensors do.
    images, texts = torch.empty(3, 4, device="meta"), torch.empty(5, 4, device="meta")
    owners = torch.tensor([0, 1, 2, 0, 1], device="meta")
    ranks = _image_to_text_ranks(images, texts, owners)
    assert ranks.device.type == "meta" and ranks.shape == (3,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_recalls_of_cuda_embeddings_with_cpu_indices() -> None:
    from dgtrs_geo.evaluation.retrieval import retrieval_recalls

    images = torch.eye(3, device="cuda")
    recalls = retrieval_recalls(images, images.clone(), [0, 1, 2])  # a list: moved to CUDA
    assert recalls["i2t_r1"] == recalls["t2i_r1"] == 100.0


# --- runner.py: zero-shot settings, SeLo subsets and figure names -------------------------------


def test_zeroshot_text_batches_follow_the_batch_size_setting() -> None:
    from dgtrs_geo.evaluation.runner import EvaluationSettings, evaluate_zeroshot

    model = FakeModel()
    templates = ("a {}.", "the {} here.", "some {}.")
    settings = EvaluationSettings(batch_size=2, progress=False, templates=templates)
    result = evaluate_zeroshot(model, _scenes_data([0, 1, 2, 0]), settings)
    # Three prompts per class in batches of two: [2, 1] for each of the three classes.
    assert model.text_batches == [2, 1] * 3
    assert result["top1"] == 100.0 and result["confusion"] == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(InputError) as error:
        evaluate_zeroshot(model, _scenes_data([0], classnames=[]), settings)
    assert str(error.value) == "Toy has no class names: is it a classification dataset?"


def _box_map(box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    prob_map = np.zeros((64, 64))
    prob_map[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return prob_map


def _rsu_of_box(prob_map: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    mask = np.zeros_like(prob_map)
    mask[y0 : y1 + 1, x0 : x1 + 1] = 1  # fillPoly includes the outline
    inside = (prob_map * mask).sum()
    ratio = inside / (prob_map.sum() - inside + 1e-7) * (mask.size - mask.sum()) / mask.sum()
    return 1 - math.exp(-0.707 * ratio)


@pytest.fixture
def box_maps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """SeLo's fast map replaced by one lighting the query's own box ("query k" -> BOXES[k])."""
    from dgtrs_geo.localization import reference

    queries: list[str] = []

    def fast(image, query, model, scales, **kwargs):
        queries.append(query)
        return _box_map(BOXES[int(query.split()[-1])])

    monkeypatch.setattr(reference, "fast_probability_map", fast)
    return queries


def test_selo_on_any_subset_scores_those_queries_in_that_order(
    tmp_path: Path, box_maps, capsys
) -> None:
    from dgtrs_geo.datasets import AIRSLT
    from dgtrs_geo.evaluation.data import BenchmarkData
    from dgtrs_geo.evaluation.runner import EvaluationSettings, evaluate_selo

    _fabricate_airslt(tmp_path / "AIRSLT", BOXES)
    airslt = AIRSLT(root=str(tmp_path / "AIRSLT"))
    data = BenchmarkData("AIRSLT", "selo", Subset(airslt, [2, 0]), "k")
    settings = EvaluationSettings(selo_modes=("fast",), progress=True)
    rows = evaluate_selo(FakeModel(), data, settings)["fast"]["samples"]
    assert [(r["index"], r["caption"]) for r in rows] == [(2, "query 2"), (0, "query 0")]
    assert box_maps == ["query 2", "query 0"]
    for row, box in zip(rows, (BOXES[2], BOXES[0]), strict=True):
        assert row["rsu"] == pytest.approx(_rsu_of_box(_box_map(box), box), abs=1e-9)
    err = capsys.readouterr().err
    assert "AIRSLT queries:" in err and err.endswith("\r")  # bar shown, then cleared


def test_selo_figures_are_named_after_the_report_label(
    tmp_path: Path, box_maps, monkeypatch
) -> None:
    from dgtrs_geo.evaluation.data import load_benchmark
    from dgtrs_geo.evaluation.runner import EvaluationSettings, run_evaluation

    model = FakeModel()
    monkeypatch.setattr(dgtrs_geo, "load_model", lambda source, device="cpu", **kw: model)
    _fabricate_airslt(tmp_path / "AIRSLT", BOXES)
    data = load_benchmark("AIRSLT", str(tmp_path / "AIRSLT"), limit=1)
    settings = EvaluationSettings(
        selo_modes=("fast",), progress=False, figures_dir=tmp_path / "fig", selo_figures=1
    )
    report = run_evaluation(["/runs/7/my model.ckpt"], [data], settings)
    assert report["models"] == ["my model"]
    # The label (the checkpoint's stem), not the model_id, with unsafe characters replaced.
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["selo-AIRSLT-my_model-000.png"]


# --- selo.py: input checks at their boundaries, attention centres -----------------------------


def test_probability_map_bounds_are_inclusive_within_rounding_and_clipped() -> None:
    from dgtrs_geo.evaluation.selo import check_probability_map

    low = check_probability_map(np.array([[-1e-6, 0.5]]))  # exactly the tolerance: accepted
    assert low.tolist() == [[0.0, 0.5]]
    high = check_probability_map(np.array([[0.25, 1.0 + 1e-6]]))
    assert high.tolist() == [[0.25, 1.0]]
    with pytest.raises(ValueError) as error:
        check_probability_map(np.array([[0.0, 1.5]]))
    assert str(error.value) == (
        "prob_map values must lie in [0, 1], got [0.0, 1.5]; min-max normalise it (or divide a "
        "uint8 map by 255)"
    )


def test_integer_polygons_come_back_as_float64() -> None:
    from dgtrs_geo.evaluation.selo import check_polygons

    (polygon,) = check_polygons([[[0, 0], [4, 0], [4, 3]]])
    assert polygon.dtype == np.float64 and polygon.tolist() == [[0, 0], [4, 0], [4, 3]]


def test_one_object_on_a_large_map_gives_one_attention_centre() -> None:
    from dgtrs_geo.evaluation.selo import attention_centres

    # On a map larger than the 1000-pixel peak window, the empty border frame is a plateau of
    # zeros; it is no peak (its centroid, the map's centre, lies on the object).
    prob_map = np.zeros((1400, 1400))
    prob_map[650:750, 650:750] = 1.0
    centres = attention_centres(prob_map)
    assert len(centres) == 1
    (x, y) = centres[0]
    assert abs(x - 700) <= 3 and abs(y - 700) <= 3


# --- templates.py ------------------------------------------------------------------------------


def test_unreadable_templates_file_names_it(tmp_path: Path) -> None:
    from dgtrs_geo.evaluation.templates import read_templates

    path = tmp_path / "missing.txt"
    with pytest.raises(InputError) as error:
        read_templates(str(path))
    assert re.fullmatch(
        re.escape(f"cannot read the templates file {path}: [Errno 2] No such file or directory: ")
        + ".*missing.txt'",
        str(error.value),
    )
