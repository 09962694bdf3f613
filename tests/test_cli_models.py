import json

import pytest
import torch
from PIL import Image

import dgtrs_geo
from dgtrs_geo.cli import main


def test_models_lists_registry_and_cache_state(capsys) -> None:
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {
        "dgtrs-clip-vit-b-16",
        "dgtrs-clip-vit-l-14",
        "longclip-b",
        "georsclip-vit-b-32",
        "remoteclip-vit-b-32",
        "openai-vit-b-16",
    } <= set(rows)
    assert rows["dgtrs-clip-vit-b-16"]["context_length"] == 248
    assert rows["dgtrs-clip-vit-b-16"]["cached"] is False
    assert main(["models"]) == 0
    assert "dgtrs-clip-vit-l-14" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["open_clip", "dgtrs"])
def test_convert_keeps_embeddings(tiny_checkpoint, tiny_model, tmp_path, target, capsys) -> None:
    out = tmp_path / f"converted-{target}.pt"
    assert main(["convert", str(tiny_checkpoint), str(out), "--to", target]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = dgtrs_geo.load_model(out, quick_gelu=True)
    texts = ["a harbour with ships"]
    assert torch.equal(converted.encode_text(texts), tiny_model.encode_text(texts))


def test_embed_text_and_image_print_unit_vectors(tiny_checkpoint, tmp_path, capsys) -> None:
    assert (
        main(
            [
                "embed-text",
                "a harbour",
                "a forest",
                "--model",
                str(tiny_checkpoint),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload["context_length"] == 248 and payload["model_id"].startswith("dgtrs-tiny-")
    vectors = torch.tensor([item["embedding"] for item in payload["items"]])
    assert vectors.shape == (2, 32) and torch.allclose(
        vectors.norm(dim=1), torch.ones(2), atol=1e-5
    )
    assert payload["items"][0]["tokens"] == 4

    Image.new("RGB", (50, 40), (30, 120, 60)).save(tmp_path / "patch.png")
    assert main(["embed-image", str(tmp_path / "patch.png"), "--model", str(tiny_checkpoint)]) == 0
    item = json.loads(capsys.readouterr().out)["items"][0]
    assert len(item["embedding"]) == 32


def test_cli_errors_are_one_clear_line(tmp_path, capsys) -> None:
    (tmp_path / "junk.pt").write_text("junk")
    assert main(["embed-text", "x", "--model", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dgtrs-geo embed-text: error:") and "not a PyTorch checkpoint" in err


def test_checkpoint_with_nan_weights_is_one_clear_line(tiny_checkpoint, tmp_path, capsys) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["ln_final.weight"] = state["ln_final.weight"].clone()
    state["ln_final.weight"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    assert main(["embed-text", "x", "--model", str(tmp_path / "nan.pt")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgtrs-geo embed-text: error:")
    assert str(tmp_path / "nan.pt") in lines[0] and "'ln_final.weight'" in lines[0]
