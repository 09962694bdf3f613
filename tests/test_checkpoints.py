"""Checkpoint formats, checked against a CLIP forward written here from OpenAI's published math."""

import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dgtrs_geo
from dgtrs_geo.errors import DgtrsGeoError, ModelError
from dgtrs_geo.models import (
    CheckpointError,
    TextTruncationWarning,
    WeightsUnavailableError,
    read_checkpoint,
    save_checkpoint,
)
from dgtrs_geo.models.checkpoints import CheckpointNotFoundError
from dgtrs_geo.models.kps import stretch_positional_embedding
from dgtrs_geo.models.registry import REGISTRY, download_weights, weights_path

WIDTH, LAYERS, PATCH, IMAGE, EMBED, VOCAB, CONTEXT = 64, 2, 8, 32, 32, 49408, 248
BLOCK_SHAPES = {
    "attn.in_proj_weight": (3 * WIDTH, WIDTH),
    "attn.in_proj_bias": (3 * WIDTH,),
    "attn.out_proj.weight": (WIDTH, WIDTH),
    "attn.out_proj.bias": (WIDTH,),
    "ln_1.weight": (WIDTH,),
    "ln_1.bias": (WIDTH,),
    "mlp.c_fc.weight": (4 * WIDTH, WIDTH),
    "mlp.c_fc.bias": (4 * WIDTH,),
    "mlp.c_proj.weight": (WIDTH, 4 * WIDTH),
    "mlp.c_proj.bias": (WIDTH,),
    "ln_2.weight": (WIDTH,),
    "ln_2.bias": (WIDTH,),
}


def release_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A DGTRS-CLIP release state dict in the documented key layout (docs/protocols.md sec. 3)."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "positional_embedding": (CONTEXT, WIDTH),
        "positional_embedding_res": (CONTEXT, WIDTH),
        "token_embedding.weight": (VOCAB, WIDTH),
        "ln_final.weight": (WIDTH,),
        "ln_final.bias": (WIDTH,),
        "text_projection": (WIDTH, EMBED),
        "logit_scale": (),
        "visual.conv1.weight": (WIDTH, 3, PATCH, PATCH),
        "visual.class_embedding": (WIDTH,),
        "visual.positional_embedding": ((IMAGE // PATCH) ** 2 + 1, WIDTH),
        "visual.ln_pre.weight": (WIDTH,),
        "visual.ln_pre.bias": (WIDTH,),
        "visual.ln_post.weight": (WIDTH,),
        "visual.ln_post.bias": (WIDTH,),
        "visual.proj": (WIDTH, EMBED),
    }
    for tower in ("", "visual."):
        for i in range(LAYERS):
            for sub, shape in BLOCK_SHAPES.items():
                shapes[f"{tower}transformer.resblocks.{i}.{sub}"] = shape
    state = {key: torch.randn(shape, generator=g) * 0.2 for key, shape in shapes.items()}
    for key in state:
        if key.endswith(
            ("ln_1.weight", "ln_2.weight", "ln_final.weight", "ln_pre.weight", "ln_post.weight")
        ):
            state[key] = 1 + state[key] * 0.1
    return state


def block(
    x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, mask: torch.Tensor | None
) -> torch.Tensor:
    """One OpenAI CLIP residual block, one attention head (width 64 // 64), QuickGELU."""

    def ln(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(
            t, (WIDTH,), p[f"{prefix}{name}.weight"], p[f"{prefix}{name}.bias"], 1e-5
        )

    h = ln(x, "ln_1")
    q, k, v = (h @ p[f"{prefix}attn.in_proj_weight"].T + p[f"{prefix}attn.in_proj_bias"]).chunk(
        3, dim=-1
    )
    scores = q @ k.transpose(-1, -2) / WIDTH**0.5
    if mask is not None:
        scores = scores + mask
    attn = scores.softmax(-1) @ v
    x = x + attn @ p[f"{prefix}attn.out_proj.weight"].T + p[f"{prefix}attn.out_proj.bias"]
    h = ln(x, "ln_2") @ p[f"{prefix}mlp.c_fc.weight"].T + p[f"{prefix}mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ p[f"{prefix}mlp.c_proj.weight"].T + p[f"{prefix}mlp.c_proj.bias"]


def reference_text(
    p: dict[str, torch.Tensor], tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    x = p["token_embedding.weight"][tokens] + positions
    mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
    for i in range(LAYERS):
        x = block(x, p, f"transformer.resblocks.{i}.", mask)
    x = F.layer_norm(x, (WIDTH,), p["ln_final.weight"], p["ln_final.bias"], 1e-5)
    pooled = x[torch.arange(len(tokens)), tokens.argmax(dim=-1)]
    return F.normalize(pooled @ p["text_projection"], dim=-1)


def reference_image(p: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(images, p["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = p["visual.class_embedding"].expand(len(images), 1, WIDTH)
    x = torch.cat([cls, x], dim=1) + p["visual.positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), p["visual.ln_pre.weight"], p["visual.ln_pre.bias"], 1e-5)
    for i in range(LAYERS):
        x = block(x, p, f"visual.transformer.resblocks.{i}.", None)
    x = F.layer_norm(x[:, 0], (WIDTH,), p["visual.ln_post.weight"], p["visual.ln_post.bias"], 1e-5)
    return F.normalize(x @ p["visual.proj"], dim=-1)


TEXTS = ["a tennis court between two white buildings", "dense forest"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = release_state_dict()
    path = tmp_path_factory.mktemp("release") / "DGTRS-CLIP-tiny.pt"
    torch.save(state, path)
    return path, state


def test_release_format_matches_reference_math(release) -> None:
    path, state = release
    model = dgtrs_geo.load_model(path)
    assert model.context_length == 248 and model.image_size == 32 and model.embed_dim == 32
    positions = torch.cat(
        [state["positional_embedding"][:20], state["positional_embedding_res"][20:]]
    )
    tokens = model.tokenizer(TEXTS)
    expected_text = reference_text(state, tokens, positions)
    assert torch.allclose(model.encode_text(TEXTS), expected_text, atol=1e-5)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.encode_image(images), reference_image(state, images), atol=1e-5)
    assert model.encode_text(TEXTS).dtype == torch.float32


def test_round_trip_dgtrs_open_clip_dgtrs(release, tmp_path) -> None:
    path, _ = release
    model = dgtrs_geo.load_model(path)
    images = torch.randn(2, 3, 32, 32)
    as_open_clip = save_checkpoint(model.clip, tmp_path / "oc.pt", format="open_clip")
    assert read_checkpoint(as_open_clip)[1] == "open_clip"
    back = save_checkpoint(
        dgtrs_geo.load_model(as_open_clip, quick_gelu=True).clip, tmp_path / "d.pt"
    )
    state = torch.load(back, weights_only=True)
    assert "positional_embedding_res" in state and read_checkpoint(back)[1] == "dgtrs"
    for reloaded in (
        dgtrs_geo.load_model(as_open_clip, quick_gelu=True),
        dgtrs_geo.load_model(back),
    ):
        assert torch.equal(reloaded.encode_text(TEXTS), model.encode_text(TEXTS))
        assert torch.equal(reloaded.encode_image(images), model.encode_image(images))


def test_openai_state_dict_and_torchscript_with_kps(tmp_path) -> None:
    state = release_state_dict(seed=3)
    state.pop("positional_embedding_res")
    state["positional_embedding"] = state["positional_embedding"][:77].clone()
    openai = {key: value.half() for key, value in state.items()}
    openai.update(
        input_resolution=torch.tensor(32),
        context_length=torch.tensor(77),
        vocab_size=torch.tensor(VOCAB),
    )
    torch.save(openai, tmp_path / "openai.pt")
    short = dgtrs_geo.load_model(tmp_path / "openai.pt")
    assert short.context_length == 77
    long = dgtrs_geo.load_model(tmp_path / "openai.pt", kps=True)
    assert long.context_length == 248 and long.model_id.endswith("kps20x4-248")
    half = {
        key: value.float() for key, value in openai.items() if value.ndim or key == "logit_scale"
    }
    positions = stretch_positional_embedding(half["positional_embedding"])
    expected = reference_text(half, long.tokenizer(TEXTS), positions)
    assert torch.allclose(long.encode_text(TEXTS), expected, atol=1e-4)

    # OpenAI also ships TorchScript archives: read their weights without unpickling Python code.
    scripted = torch.jit.script(short.clip)
    scripted.save(str(tmp_path / "openai-jit.pt"))
    from_jit = dgtrs_geo.load_model(tmp_path / "openai-jit.pt")
    assert torch.allclose(from_jit.encode_text(TEXTS), short.encode_text(TEXTS), atol=1e-6)


def test_lightning_checkpoint_is_read(release, tmp_path) -> None:
    path, _ = release
    model = dgtrs_geo.load_model(path)
    state = {f"model.{key}": value for key, value in model.clip.state_dict().items()}
    torch.save(
        {"state_dict": state, "pytorch-lightning_version": "2.6.0", "epoch": 1},
        tmp_path / "last.ckpt",
    )
    reloaded = dgtrs_geo.load_model(tmp_path / "last.ckpt")
    assert torch.equal(reloaded.encode_text(TEXTS), model.encode_text(TEXTS))


def _broken(state: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    state = dict(state)
    match case:
        case "missing":
            state.pop("visual.ln_post.bias")
        case "unexpected":
            state["visual.extra_head.weight"] = torch.zeros(2)
        case "shape":
            state["text_projection"] = torch.zeros(WIDTH, EMBED + 1)
    return state


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"missing keys \['visual.ln_post.bias'\]"),
        ("unexpected", r"unexpected keys \['visual.extra_head.weight'\]"),
        ("shape", r"wrong shapes \['text_projection \(64, 33\)"),
    ],
)
def test_malformed_state_dicts_name_the_key(release, tmp_path, case: str, message: str) -> None:
    _, state = release
    torch.save(_broken(state, case), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        dgtrs_geo.load_model(tmp_path / "bad.pt", arch="dgtrs-tiny")


class Payload:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_unsafe_truncated_and_foreign_files_are_refused(release, tmp_path) -> None:
    path, _ = release
    with open(tmp_path / "evil.pt", "wb") as file:
        pickle.dump({"weights": Payload()}, file)
    with pytest.raises(CheckpointError, match="carries Python objects"):
        dgtrs_geo.load_model(tmp_path / "evil.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        dgtrs_geo.load_model(tmp_path / "cut.pt")
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        dgtrs_geo.load_model(tmp_path / "notes.txt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        dgtrs_geo.load_model(tmp_path / "empty.pt")
    torch.save({"optimizer": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no CLIP weights found"):
        dgtrs_geo.load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="neither a registered model name") as missing:
        dgtrs_geo.load_model(tmp_path / "nowhere.pt")
    # A typo in a model name is the user's to fix: the CLI and the worker report it as such.
    assert isinstance(missing.value, CheckpointNotFoundError)
    assert isinstance(missing.value, ModelError)


def test_truncation_warns_with_token_count(tiny_model) -> None:
    long_text = " ".join(["building"] * 300)
    with pytest.warns(TextTruncationWarning, match="302 tokens, more than this model's 248"):
        tokens = tiny_model.tokenize([long_text])
    assert tokens.shape == (1, 248) and tokens[0, -1] == tiny_model.tokenizer.eot_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_model.tokenize(["a short caption"])


def test_offline_registry_name_says_where_to_put_the_file(monkeypatch) -> None:
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests, "get", offline)
    with pytest.raises(dgtrs_geo.models.WeightsUnavailableError) as error:
        dgtrs_geo.load_model("dgtrs-clip-vit-b-16")
    message = str(error.value)
    assert "MitsuiChen14/DGTRS-CLIP-ViT-B-16" in message and "DGTRS-CLIP-ViT-B-16.pt" in message


def test_error_classes_are_catchable_old_and_new_ways() -> None:
    assert issubclass(CheckpointError, ModelError) and issubclass(CheckpointError, ValueError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(WeightsUnavailableError, ModelError)
    assert issubclass(WeightsUnavailableError, RuntimeError)
    assert issubclass(ModelError, DgtrsGeoError)


def _first_key(state: dict[str, torch.Tensor], *candidates: str) -> str:
    return min(candidates, key=list(state).index)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_file_and_first_key(tmp_path, bad: float) -> None:
    state = release_state_dict(seed=5)
    early, late = "text_projection", "visual.transformer.resblocks.1.mlp.c_fc.weight"
    assert _first_key(state, early, late) == early
    state[late] = state[late].clone()
    state[late][0, 0] = float("nan")
    state[early] = state[early].clone()
    state[early][3, 7] = bad
    state[early][5, 1] = bad
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(ModelError) as error:
        dgtrs_geo.load_model(path)
    message = str(error.value)
    assert isinstance(error.value, CheckpointError)
    assert str(path) in message and repr(early) in message and late not in message
    numel = state[early].numel()
    assert f"holds 2 NaN or infinite value(s) out of {numel}" in message
    with pytest.raises(CheckpointError, match="'text_projection'"):
        read_checkpoint(path)


def test_only_weights_the_model_uses_are_checked(tmp_path) -> None:
    # Rows < 20 of positional_embedding_res are never used by the release format (folding takes
    # them from positional_embedding), so a NaN there leaves the model usable.
    state = release_state_dict(seed=6)
    state["positional_embedding_res"] = state["positional_embedding_res"].clone()
    state["positional_embedding_res"][:20] = float("nan")
    torch.save(state, tmp_path / "unused-nan.pt")
    model = dgtrs_geo.load_model(tmp_path / "unused-nan.pt")
    assert torch.isfinite(model.encode_text(TEXTS)).all()
    state["positional_embedding_res"][20, 0] = float("nan")
    torch.save(state, tmp_path / "used-nan.pt")
    with pytest.raises(CheckpointError, match="'positional_embedding'"):
        dgtrs_geo.load_model(tmp_path / "used-nan.pt")


def test_finite_weights_whose_sum_overflows_are_accepted(tmp_path) -> None:
    state = release_state_dict(seed=7)
    state["text_projection"] = torch.full_like(state["text_projection"], 3e38)
    assert not torch.isfinite(state["text_projection"].sum())
    torch.save(state, tmp_path / "huge.pt")
    weights, _ = read_checkpoint(tmp_path / "huge.pt")
    assert torch.equal(weights["text_projection"], state["text_projection"])


def test_kps_on_a_stretched_model_is_a_model_error(release) -> None:
    path, _ = release
    with pytest.raises(ModelError, match="already has 248 positions"):
        dgtrs_geo.load_model(path, kps=True)


def test_uncached_name_without_download_says_where_to_put_the_file() -> None:
    entry = REGISTRY["georsclip-vit-b-32"]
    with pytest.raises(WeightsUnavailableError) as error:
        dgtrs_geo.load_model(entry.name, download=False)
    assert str(weights_path(entry)) in str(error.value) and entry.url in str(error.value)


def test_corrupt_download_is_refused_and_leaves_nothing(monkeypatch, tmp_path) -> None:
    import requests

    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path))

    class Response:
        headers = {"content-length": "5"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self) -> None:
            pass

        def iter_content(self, chunk_size: int):
            yield b"bogus"

    monkeypatch.setattr(requests, "get", lambda *args, **kwargs: Response())
    entry = REGISTRY["openai-vit-b-16"]
    with pytest.raises(WeightsUnavailableError, match="is corrupt: sha256") as error:
        download_weights(entry, progress=False)
    assert entry.url in str(error.value)
    assert weights_path(entry).parent == tmp_path / "models"
    assert list(tmp_path.rglob("*.pt*")) == []
