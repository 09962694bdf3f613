"""Tests written from the mutation run on ``dgtrs_geo/models/factory.py`` and ``architecture.py``.

Each pins a behaviour a surviving mutant changed; benchmarks/results/mutation-triage.md lists the
mutants each kills and the equivalent ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from PIL import Image
from torch import nn

from dgtrs_geo.errors import InputError, ModelError
from dgtrs_geo.models import architecture
from dgtrs_geo.models.architecture import architecture_config, create_clip, infer_config
from dgtrs_geo.models.checkpoints import CheckpointError
from dgtrs_geo.models.factory import (
    EmbeddingModel,
    TextTruncationWarning,
    build_clip,
    file_fingerprint,
    load_model,
    resolve_device,
)
from dgtrs_geo.models.registry import REGISTRY, weights_path

_TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 248, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def _activations(clip: nn.Module) -> set[type]:
    return {type(m) for m in clip.modules() if isinstance(m, (QuickGELU, nn.GELU))}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return create_clip("dgtrs-tiny").state_dict()


@pytest.fixture(scope="module")
def state77() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return create_clip("dgtrs-tiny", context_length=77).state_dict()


@pytest.fixture(scope="module")
def file77(state77: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt77") / "tiny77.pt"
    torch.save(state77, path)  # open_clip layout: a plain state dict
    return path


# --- architecture_config / create_clip -------------------------------------------------------


def test_architecture_config_reads_project_names_and_open_clip_names() -> None:
    """Short names map to the shipped JSON; other names go to open_clip unchanged."""
    shipped = json.loads(
        (Path(architecture.__file__).parent / "configs/DGTRS-tiny.json").read_text()
    )
    assert architecture_config("dgtrs-tiny") == shipped
    assert architecture_config("ViT-B-32")["vision_cfg"]["patch_size"] == 32


def test_unknown_architecture_names_the_known_ones() -> None:
    message = (
        "unknown architecture 'nope': use one of dgtrs-vit-b-16, dgtrs-vit-l-14, dgtrs-tiny "
        "or an open_clip model name"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        architecture_config("nope")


def test_create_clip_context_length_override_leaves_the_callers_config_alone() -> None:
    """context_length sets the text positions; a config dict passed in is not modified."""
    config = copy.deepcopy(_TINY)
    clip = create_clip(config, context_length=77)
    assert clip.positional_embedding.shape == (77, 64) and clip.context_length == 77
    assert config == _TINY


def test_create_clip_quick_gelu_override_sets_the_activation() -> None:
    config = dict(copy.deepcopy(_TINY), quick_gelu=False)
    assert _activations(create_clip(config)) == {nn.GELU}
    assert _activations(create_clip(config, quick_gelu=True)) == {QuickGELU}


# --- infer_config ----------------------------------------------------------------------------


def test_infer_config_reads_every_vit_size_from_the_shapes() -> None:
    """One-patch ViT (grid 1), text width 128 (2 heads, int), context 20 != width, 3 layers."""
    config = {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 8,
            "layers": 1,
            "width": 64,
            "patch_size": 8,
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": 20,
            "vocab_size": 100,
            "width": 128,
            "heads": 2,
            "layers": 3,
        },
    }
    inferred = infer_config(create_clip(config).state_dict())  # default: QuickGELU
    assert inferred == config
    assert type(inferred["text_cfg"]["heads"]) is int  # a float head count breaks encode_text


def test_infer_config_reads_every_resnet_size_from_the_shapes() -> None:
    """ModifiedResNet: 96 px = 3x3 attention-pool grid x 32, stage depths 1,2,1,3, width 8."""
    config = {
        "embed_dim": 24,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 96, "layers": [1, 2, 1, 3], "width": 8, "head_width": 64},
        "text_cfg": {"context_length": 20, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1},
    }
    inferred = infer_config(create_clip(config).state_dict(), quick_gelu=False)
    assert inferred == config


def test_build_clip_reports_missing_tensors_as_checkpoint_errors(
    tiny_state: dict[str, torch.Tensor],
) -> None:
    """Inference failures name the source (default 'checkpoint') and the missing tensor."""
    no_positions = {k: v for k, v in tiny_state.items() if k != "positional_embedding"}
    message = (
        "checkpoint: missing tensor 'positional_embedding': not a CLIP state dict in "
        "OpenAI/open_clip layout"
    )
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        build_clip(no_positions)
    no_vision = {k: v for k, v in tiny_state.items() if k != "visual.proj"}
    message = "checkpoint: missing tensor 'visual.proj' (ViT) or 'visual.attnpool.*' (ResNet)"
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        build_clip(no_vision)


# --- build_clip / _load_strict ---------------------------------------------------------------


def test_build_clip_takes_the_context_length_from_the_weights(
    state77: dict[str, torch.Tensor],
) -> None:
    """A named 248-token architecture still loads 77-position weights at 77."""
    clip = build_clip(state77, arch="dgtrs-tiny")
    assert clip.context_length == 77
    torch.testing.assert_close(clip.positional_embedding, state77["positional_embedding"])


def test_build_clip_stretches_with_the_given_ratio(state77: dict[str, torch.Tensor]) -> None:
    """KPS keep=10, ratio=2: 2*77 - 1*10 = 144 rows, the first 10 copied."""
    clip = build_clip(state77, kps=(10, 2))
    pe = clip.positional_embedding.detach()
    assert pe.shape[0] == 144
    torch.testing.assert_close(pe[:10], state77["positional_embedding"][:10])


def test_build_clip_with_arch_uses_the_asked_activation(
    tiny_state: dict[str, torch.Tensor],
) -> None:
    assert _activations(build_clip(tiny_state, arch="dgtrs-tiny", quick_gelu=True)) == {QuickGELU}
    assert _activations(build_clip(tiny_state, arch="dgtrs-tiny", quick_gelu=False)) == {nn.GELU}


@pytest.mark.parametrize("count", [5, 6])
def test_mismatch_lists_at_most_five_keys_and_marks_more(
    tiny_state: dict[str, torch.Tensor], count: int
) -> None:
    """Missing and unexpected keys: the first five sorted, ' ...' only when there are more."""
    dropped = sorted(tiny_state)[:count]
    extra = sorted(f"extra.{i}" for i in range(count))
    state = {k: v for k, v in tiny_state.items() if k not in dropped}
    state.update({key: torch.zeros(1) for key in extra})
    more = " ..." if count > 5 else ""
    message = (
        f"checkpoint does not match the architecture: missing keys {dropped[:5]}{more}; "
        f"unexpected keys {extra[:5]}{more}"
    )
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        build_clip(state, arch="dgtrs-tiny")


def test_mismatch_lists_at_most_three_wrong_shapes(tiny_state: dict[str, torch.Tensor]) -> None:
    keys = [k for k in tiny_state if tiny_state[k].ndim == 2 and k != "positional_embedding"][:4]
    state = dict(tiny_state)
    for key in keys:
        state[key] = torch.zeros(3, 3)
    wrong = [f"{k} (3, 3) (expected {tuple(tiny_state[k].shape)})" for k in keys[:3]]
    message = f"checkpoint does not match the architecture: wrong shapes {wrong}"
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        build_clip(state, arch="dgtrs-tiny")


# --- file_fingerprint ------------------------------------------------------------------------


def _write(path: Path, size: int) -> bytes:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def test_fingerprint_of_a_small_file_hashes_its_size_and_all_of_it(tmp_path: Path) -> None:
    data = _write(tmp_path / "w.pt", 1000)
    expected = hashlib.sha256(b"1000" + data).hexdigest()[:16]
    assert file_fingerprint(tmp_path / "w.pt") == expected


def test_fingerprint_of_a_large_file_hashes_start_middle_and_end(tmp_path: Path) -> None:
    """Three 4 MiB samples at 0, size/2 - 2 MiB and size - 4 MiB, after the size."""
    size, sample = 9 * 2**20 + 12345, 4 * 2**20
    data = _write(tmp_path / "w.pt", size)
    middle = size // 2 - sample // 2
    hashed = (
        str(size).encode() + data[:sample] + data[middle : middle + sample] + data[size - sample :]
    )
    assert file_fingerprint(tmp_path / "w.pt") == hashlib.sha256(hashed).hexdigest()[:16]


# --- resolve_device --------------------------------------------------------------------------


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_picks_cuda_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)
    assert resolve_device("auto") == torch.device("cuda")
    _gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    message = f"device 'cuda': this torch ({torch.__version__}) sees no CUDA GPU; use cpu or auto"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        resolve_device("cuda")


def test_cuda_index_is_checked_against_the_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)
    assert resolve_device("cuda") == torch.device("cuda")
    _gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    message = "device 'cuda:2': this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        resolve_device("cuda:2")


def test_mps_is_refused_only_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    message = "device 'mps': MPS is not available here; use cpu or auto"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        resolve_device("mps")


# --- EmbeddingModel --------------------------------------------------------------------------


def test_embedding_model_defaults_to_cpu_and_moves_the_weights() -> None:
    """Default device cpu; a given device (meta: no memory) and ``to`` move every weight."""
    model = EmbeddingModel(create_clip("dgtrs-tiny"), "x")
    assert model.device == torch.device("cpu")
    assert model.to("meta") is model and model.device == torch.device("meta")
    assert {p.device.type for p in model.clip.parameters()} == {"meta"}
    built = EmbeddingModel(create_clip("dgtrs-tiny"), "y", device="meta")
    assert {p.device.type for p in built.clip.parameters()} == {"meta"}


def test_embedding_model_image_size_is_the_height() -> None:
    config = copy.deepcopy(_TINY)
    config["vision_cfg"]["image_size"] = (32, 48)
    assert EmbeddingModel(create_clip(config), "x").image_size == 32


def test_autocast_is_bfloat16_on_cuda_and_off_elsewhere() -> None:
    model = EmbeddingModel(create_clip("dgtrs-tiny"), "x")
    assert not isinstance(model._autocast(), torch.autocast)
    model.device = torch.device("cuda")  # no GPU needed: only the context is inspected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... Disabling autocast"
        context = model._autocast()
    assert isinstance(context, torch.autocast)
    assert context.device == "cuda" and context.fast_dtype == torch.bfloat16


def test_encode_pil_converts_to_rgb_before_resizing(tiny_model: EmbeddingModel) -> None:
    """A transparent RGBA pixel keeps its colour (resizing RGBA would premultiply it to black)."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = np.arange(64)[:, None] * 4
    rgba[..., 1] = 200
    rgba[:32, :, 3] = 255  # top half opaque, bottom half fully transparent
    image = Image.fromarray(rgba, "RGBA")
    torch.testing.assert_close(
        tiny_model.encode_pil([image]), tiny_model.encode_pil([image.convert("RGB")])
    )


def test_tokenize_warns_only_past_the_context_with_the_text_start(
    tiny_model: EmbeddingModel,
) -> None:
    encode = open_clip.tokenizer.SimpleTokenizer().encode
    exact = "a " * 246
    assert len(encode(exact)) + 2 == 248  # start and end tokens: exactly the context
    with warnings.catch_warnings():
        warnings.simplefilter("error", TextTruncationWarning)
        tiny_model.tokenize([exact])
    long = "a b " * 200
    count = len(encode(long)) + 2
    message = (
        f"text has {count} tokens, more than this model's 248: it was cut to 248 "
        f"(text starts 'a b a b a b a b a b a b a b a b a b a b ')"
    )
    with pytest.warns(TextTruncationWarning, match=f"^{re.escape(message)}$"):
        tiny_model.tokenize([long])


# --- load_model ------------------------------------------------------------------------------


def test_load_model_stretches_with_the_given_kps(file77: Path) -> None:
    model = load_model(file77, kps=(10, 2))
    assert model.context_length == 144
    assert model.model_id == f"tiny77-{file_fingerprint(file77)}-kps10x2-144"


def test_load_model_reads_a_path_in_the_format_asked(tiny_checkpoint: Path) -> None:
    """A DGTRS file read as open_clip keeps its second table: refused, not silently detected."""
    with pytest.raises(CheckpointError, match=r"unexpected keys \['positional_embedding_res'\]$"):
        load_model(tiny_checkpoint, checkpoint_format="open_clip")


def test_load_model_names_the_file_that_does_not_match(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "extra.pt"
    torch.save({**tiny_state, "extra": torch.zeros(1)}, path)
    message = f"{path} does not match the architecture: unexpected keys ['extra']"
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        load_model(path)


def test_load_model_unknown_source_lists_the_registered_names() -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_model("no-such-model")
    assert all(name in str(error.value) for name in REGISTRY) and len(REGISTRY) > 1


@pytest.fixture
def cached_b16(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny checkpoint cached under a registered name, in a cache of this test's own."""
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    name = "dgtrs-clip-vit-b-16"
    path = weights_path(REGISTRY[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_checkpoint, path)
    return name


def test_registered_name_honours_the_callers_format_arch_and_activation(cached_b16: str) -> None:
    """Explicit checkpoint_format, arch and quick_gelu=False win over the registry entry's."""
    model = load_model(cached_b16, arch="dgtrs-tiny", quick_gelu=False, download=False)
    assert _activations(model.clip) == {nn.GELU}
    assert model.model_id.startswith(f"{cached_b16}-")
    with pytest.raises(ModelError, match="unknown architecture 'nope'"):
        load_model(cached_b16, arch="nope", download=False)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['positional_embedding_res'\]$"):
        load_model(cached_b16, arch="dgtrs-tiny", checkpoint_format="open_clip", download=False)
