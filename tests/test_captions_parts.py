"""Caption pipeline parts: config, prompts, token budget, mask layouts, sources, journal, parsing."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgtrs_geo.captions import (
    count_clip_tokens,
    cut_to_budget,
    describe_layout,
    layout_of,
    load_config,
    load_prompt,
    read_class_table,
    read_image_folder,
    read_manifest,
    read_mask,
    with_masks,
)
from dgtrs_geo.captions.images import data_url_to_image, image_to_data_url, read_rgb
from dgtrs_geo.captions.journal import Journal
from dgtrs_geo.captions.steps import MalformedOutput, _parse_scores, parse_json_answer

DATA = Path(__file__).parent / "data" / "captions"


# --- config -----------------------------------------------------------------------------------


def test_config_merges_steps_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base_url: http://h:1/v1\nconcurrency: 3\nsteps:\n  long: {model: m-vl}\n")
    config = load_config(path, concurrency=5, timeout=None)
    assert config.base_url == "http://h:1/v1"
    assert config.concurrency == 5  # the override wins, None overrides are ignored
    assert config.step("long").model == "m-vl"
    assert config.step("long").image is True  # kept from the defaults
    assert config.step("short").model == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("concurency: 3\n", "unknown key"),
        ("steps:\n  longg: {model: x}\n", "unknown step"),
        ("steps:\n  long: {modle: x}\n", r"steps\.long"),
        ("overflow: drop\n", "overflow must be"),
        ("concurrency: 0\n", "at least 1"),
    ],
)
def test_config_rejects_bad_settings(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_api_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(api_key_env="MY_LLM_KEY")
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    assert config.api_key() is None
    monkeypatch.setenv("MY_LLM_KEY", "sk-123")
    assert config.api_key() == "sk-123"
    assert "sk-123" not in repr(config)


# --- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["long", "short", "masks", "score"])
def test_packaged_prompts_render(step: str) -> None:
    prompt = load_prompt(step)
    fields = {
        "short_caption": "SHORT",
        "caption_long": "LONG",
        "caption_short": "SHORT",
        "layout": "- road: 5.0% of the image",
        "max_words": 170,
        "image_clause": "",
    }
    system, user = prompt.render(**fields)
    assert prompt.name == f"{step}-v1"
    assert system and "$" not in system + user
    assert "JSON" in user


def test_prompt_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"long-v1"):
        load_prompt("long", "v9")
    with pytest.raises(ValueError, match="needs field 'short_caption'"):
        load_prompt("long").render(max_words=3)
    (tmp_path / "long-v2.txt").write_text("[user]\nonly a user part\n")
    with pytest.raises(ValueError, match="lacks section"):
        load_prompt("long", "v2", tmp_path)


# --- token budget -----------------------------------------------------------------------------


def test_token_count_includes_sot_and_eot() -> None:
    # "a", "b", "c" are single BPE tokens; SOT and EOT make 5
    assert count_clip_tokens("a b c") == 5
    assert count_clip_tokens("") == 2


def test_cut_keeps_whole_sentences_within_budget() -> None:
    sentences = [f"A building number {i} stands near the road." for i in range(60)]
    text = " ".join(sentences)
    assert count_clip_tokens(text) > 248
    cut = cut_to_budget(text, 248)
    kept = cut.split(". ")
    assert count_clip_tokens(cut) <= 248
    assert text.startswith(cut)
    assert cut.endswith(".")
    # one more sentence would not have fitted
    assert count_clip_tokens(cut + " " + sentences[len(kept)]) > 248


def test_cut_of_one_endless_sentence_stops_at_a_word() -> None:
    text = "a field " * 200
    cut = cut_to_budget(text, 20)
    assert count_clip_tokens(cut) <= 20
    assert count_clip_tokens(cut.rstrip(".") + " field.") > 20
    assert cut.endswith(".")


def test_short_text_is_unchanged() -> None:
    assert cut_to_budget("  A small pond.  ", 248) == "A small pond."


# --- masks ------------------------------------------------------------------------------------


def test_layout_counts_regions_and_places() -> None:
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[0:5, 0:5] = 1  # building, top-left
    mask[25:30, 25:30] = 1  # building, bottom-right
    mask[12:18, :] = 2  # road across the middle row: spans the width but not the height
    mask[0, 29] = 1  # one-pixel speckle: counted in the share, not as a region
    classes = {0: "background", 1: "building", 2: "road"}
    layouts = layout_of(mask, classes, ignore=[0], min_region=0.002)
    assert [layout.name for layout in layouts] == ["road", "building"]
    road, building = layouts
    assert road.share == pytest.approx(180 / 900)
    # spans the width but not the height: a band through the middle row of cells
    assert road.regions == 1 and road.places == ("across the middle from left to right",)
    assert building.share == pytest.approx(51 / 900)
    assert building.regions == 2
    assert building.places == ("in the top-left", "in the bottom-right")
    assert building.to_text() == (
        "- building: 5.7% of the image, 2 regions, in the top-left and in the bottom-right"
    )


def test_layout_of_fabricated_masks() -> None:
    classes = read_class_table(DATA / "classes.csv")
    assert classes == {0: "background", 1: "building", 2: "road", 3: "water", 4: "tree"}
    text = describe_layout(
        layout_of(read_mask(DATA / "masks" / "scene_01.png"), classes, ignore=[0])
    )
    # 48 x 48 image: a 16 x 16 pond in the middle, trees around it
    assert text.splitlines() == [
        "- tree: 88.9% of the image, 1 region, spread across the image",
        "- water: 11.1% of the image, 1 region, in the centre",
    ]
    assert describe_layout([]) == "- (no labelled class)"
    # two buildings on the left, a river band down the right side
    text = describe_layout(
        layout_of(read_mask(DATA / "masks" / "scene_02.png"), classes, ignore=[0])
    )
    assert text.splitlines() == [
        "- water: 25.0% of the image, 1 region, down the right side from top to bottom",
        "- building: 5.6% of the image, 2 regions, in the top-left and in the bottom-left",
    ]


def test_class_table_json_forms(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(["background", "road"]))
    (tmp_path / "b.json").write_text(json.dumps({"7": "field"}))
    assert read_class_table(tmp_path / "a.json") == {0: "background", 1: "road"}
    assert read_class_table(tmp_path / "b.json") == {7: "field"}


def test_multiband_mask_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "m.png")
    with pytest.raises(ValueError, match="one band"):
        read_mask(tmp_path / "m.png")


# --- sources and images -------------------------------------------------------------------------


def test_image_folder_reads_sidecar_captions_and_masks() -> None:
    items = with_masks(read_image_folder(DATA / "images"), DATA / "masks", DATA / "images")
    assert [item.id for item in items] == [
        f"scene_0{i}.{'tif' if i == 4 else 'png'}" for i in range(5)
    ]
    assert items[0].fields["caption_short"] == "a red house beside a grey road"
    assert items[4].mask == (DATA / "masks" / "scene_04.png").resolve()


def test_missing_masks_are_named(tmp_path: Path) -> None:
    shutil.copytree(DATA / "masks", tmp_path / "masks")
    (tmp_path / "masks" / "scene_02.png").unlink()
    with pytest.raises(FileNotFoundError, match="scene_02"):
        with_masks(read_image_folder(DATA / "images"), tmp_path / "masks", DATA / "images")


def test_manifest_paths_resolve_and_duplicates_fail(tmp_path: Path) -> None:
    items = read_manifest(DATA / "manifest.jsonl")
    assert items[1].image == (DATA / "images" / "scene_01.png").resolve()
    assert items[1].fields["split"] == "train" and items[1].id == "images/scene_01.png"
    (tmp_path / "with_mask.jsonl").write_text('{"image": "a.png", "mask": "m/a.png", "id": 7}\n')
    (item,) = read_manifest(tmp_path / "with_mask.jsonl")
    assert (item.id, item.mask) == ("7", (tmp_path / "m" / "a.png").resolve())
    assert "mask" not in item.fields and "id" not in item.fields
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"image": "a.png"}\n{"image": "a.png"}\n')
    with pytest.raises(ValueError, match="share the id"):
        read_manifest(bad)
    bad.write_text('{"image": "a.png"}\n{"caption": 1}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_manifest(bad)


def test_data_url_round_trip_and_geotiff_stretch() -> None:
    url = image_to_data_url(DATA / "images" / "scene_00.png", max_side=24)
    assert url.startswith("data:image/png;base64,")
    image = data_url_to_image(url)
    assert image.size == (24, 24)
    tif = np.asarray(read_rgb(DATA / "images" / "scene_04.tif"))
    assert tif.dtype == np.uint8 and tif.shape == (48, 48, 3)
    assert tif.min() == 0 and tif.max() == 255  # 16-bit values stretched to the full 8-bit range
    with pytest.raises(ValueError, match="data URL"):
        data_url_to_image("http://example.com/a.png")


# --- journal and answer parsing ---------------------------------------------------------------


def test_journal_repairs_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "x"')
    with Journal(path) as journal:
        assert journal.repaired_bytes == len('{"id": "b", "x"')
        assert journal.done == {"a"}
        journal.append({"id": "b", "x": 2})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]
    path.write_text('{"image": "foreign.png"}\n')
    with pytest.raises(ValueError, match="not a row of a caption run"):
        Journal(path)


def test_parse_json_answer_accepts_fences_and_rejects_junk() -> None:
    assert parse_json_answer('```json\n{"caption_long": "x"}\n```', ["caption_long"]) == {
        "caption_long": "x"
    }
    assert parse_json_answer('Here: {"a": 1} done', ["a"]) == {"a": 1}
    for junk in ["no json here", '{"caption_long": "cut', '["a"]', '{"other": "x"}']:
        with pytest.raises(MalformedOutput):
            parse_json_answer(junk, ["caption_long"])


def test_scores_must_be_in_range() -> None:
    good = {"accuracy": 4, "detail": 3, "consistency": 5, "fluency": 1}
    assert _parse_scores(json.dumps(good)) == good
    for bad in [6, 0, "4", True, None]:
        with pytest.raises(MalformedOutput):
            _parse_scores(json.dumps({**good, "detail": bad}))


def test_retry_after_header_forms() -> None:
    from email.utils import formatdate

    import requests

    from dgtrs_geo.captions.backends import _retry_after

    response = requests.Response()
    assert _retry_after(response) is None
    response.headers["Retry-After"] = "2.5"
    assert _retry_after(response) == 2.5
    response.headers["Retry-After"] = formatdate(time.time() + 30, usegmt=True)
    assert 28 <= _retry_after(response) <= 30
    response.headers["Retry-After"] = "soon"
    assert _retry_after(response) is None
