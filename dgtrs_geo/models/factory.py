"""One entry point for every model: :func:`load_model` and the :class:`EmbeddingModel` it returns."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip import CLIP
from PIL import Image
from torch import Tensor

from .. import tokens
from ..errors import InputError, ModelError
from .architecture import architecture_config, create_clip, infer_config
from .checkpoints import CheckpointError, CheckpointFormat, CheckpointNotFoundError, read_checkpoint
from .kps import stretch_positional_embedding
from .registry import REGISTRY, WeightsUnavailableError, download_weights, weights_path

__all__ = [
    "EmbeddingModel",
    "TextTruncationWarning",
    "build_clip",
    "file_fingerprint",
    "load_model",
    "resolve_device",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class TextTruncationWarning(UserWarning):
    """A text had more tokens than the model's context and was cut."""


def file_fingerprint(path: Path) -> str:
    """Return a short content fingerprint of a (possibly multi-GB) file.

    Hashes the size and three 4 MiB samples (start, middle, end): stable across copies and
    renames, different for different weights, and fast enough to run on every load.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    sample = 1 << 22
    with path.open("rb") as file:
        for offset in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            file.seek(offset)
            digest.update(file.read(sample))
    return digest.hexdigest()[:16]


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the torch device ``device`` names (``"auto"``: CUDA when available, else CPU).

    Raises:
        InputError: if ``device`` is not a device name, or names a GPU this machine lacks (told
            here, not as a CUDA traceback when the weights move).

    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(
            f"device {str(device)!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
        ) from error
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(
                f"device {str(device)!r}: this torch ({torch.__version__}) sees no CUDA GPU; "
                "use cpu or auto"
            )
        if resolved.index is not None and resolved.index >= count:
            raise InputError(
                f"device {str(device)!r}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {str(device)!r}: MPS is not available here; use cpu or auto")
    return resolved


class EmbeddingModel:
    """A CLIP model ready to embed images and text, L2-normalised, in float32.

    Attributes:
        clip: the underlying open_clip ``CLIP`` module.
        preprocess: PIL image -> normalised tensor (bicubic resize, center crop, CLIP mean/std).
        tokenizer: open_clip's CLIP BPE tokenizer at this model's context length.
        context_length: text tokens the model reads (248 for DGTRS-CLIP).
        model_id: stable identifier of the weights, used to key caches.
        device: where the model runs.

    """

    def __init__(self, clip: CLIP, model_id: str, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.clip = clip.to(self.device).eval()
        self.model_id = model_id
        self.context_length = int(clip.context_length)
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple) else size)
        self.mean, self.std = OPENAI_MEAN, OPENAI_STD
        self.preprocess: Callable[[Image.Image], Tensor] = open_clip.image_transform(
            self.image_size, is_train=False, mean=self.mean, std=self.std
        )
        self.tokenizer: tokens.ClipTokenizer = tokens.clip_tokenizer(self.context_length)

    @property
    def embed_dim(self) -> int:
        """Size of the joint embedding space."""
        return int(self.clip.text_projection.shape[1])

    def count_tokens(self, text: str) -> int:
        """Return the tokens ``text`` needs, start and end tokens included, before any cut."""
        return tokens.count_tokens(text)

    def _autocast(self) -> AbstractContextManager[object]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    def encode_image(self, images: Tensor) -> Tensor:
        """Embed a batch of preprocessed images ``[B, 3, S, S]``; returns ``[B, D]`` unit vectors."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be a [B, 3, H, W] tensor, got shape {tuple(images.shape)}"
            )
        with self._autocast():
            features = self.clip.encode_image(images.to(self.device, torch.float32))
        return F.normalize(features.float(), dim=-1)

    def encode_pil(self, images: Sequence[Image.Image]) -> Tensor:
        """Embed PIL images with the model's own preprocessing."""
        return self.encode_image(
            torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        )

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Tokenize ``texts`` to the context length, warning (with counts) about any cut."""
        if isinstance(texts, str):
            texts = [texts]
        for text in texts:
            if (count := self.count_tokens(text)) > self.context_length:
                warnings.warn(
                    f"text has {count} tokens, more than this model's {self.context_length}: it was "
                    f"cut to {self.context_length} (text starts {text[:40]!r})",
                    TextTruncationWarning,
                    stacklevel=3,
                )
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Embed texts; returns ``[N, D]`` unit vectors. Over-long texts are cut with a warning."""
        ids = self.tokenize(texts)
        chunks = []
        for start in range(0, len(ids), batch_size):
            with self._autocast():
                features = self.clip.encode_text(ids[start : start + batch_size].to(self.device))
            chunks.append(F.normalize(features.float(), dim=-1))
        return torch.cat(chunks).cpu()

    def to(self, device: str | torch.device) -> EmbeddingModel:
        """Move the model to ``device``; returns self."""
        self.device = torch.device(device)
        self.clip.to(self.device)
        return self

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(model_id={self.model_id!r}, context_length={self.context_length}, "
            f"image_size={self.image_size}, device={str(self.device)!r})"
        )


def _load_strict(clip: CLIP, state: dict[str, Tensor], source: str) -> None:
    expected = clip.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append(f"wrong shapes {wrong[:3]}")
    if problems:
        raise CheckpointError(f"{source} does not match the architecture: " + "; ".join(problems))
    clip.load_state_dict(state, strict=True)


def build_clip(
    state: dict[str, Tensor],
    *,
    arch: str | None = None,
    quick_gelu: bool = True,
    kps: tuple[int, int] | None = None,
    source: str = "checkpoint",
) -> CLIP:
    """Build an open_clip ``CLIP`` from a state dict, optionally stretching its text positions.

    Args:
        state: open_clip-layout weights (see :func:`~dgtrs_geo.models.checkpoints.read_checkpoint`).
        arch: architecture name; None infers it from tensor shapes.
        quick_gelu: activation for inferred architectures.
        kps: ``(keep, ratio)`` to stretch the positional table with KPS before loading.
        source: what to call the weights in error messages.

    """
    if kps is not None:
        keep, ratio = kps
        state = dict(state)
        state["positional_embedding"] = stretch_positional_embedding(
            state["positional_embedding"], keep, ratio
        )
    context_length = (
        state["positional_embedding"].shape[0] if "positional_embedding" in state else None
    )
    if arch is None:
        try:
            config = infer_config(state, quick_gelu=quick_gelu)
        except KeyError as error:
            raise CheckpointError(f"{source}: {error.args[0]}") from error
    else:
        config = architecture_config(arch)
        config["quick_gelu"] = quick_gelu
    if context_length is not None:
        config["text_cfg"]["context_length"] = context_length
    clip = create_clip(config)
    _load_strict(clip, state, source)
    return clip


def load_model(
    source: str | Path,
    device: str | torch.device = "cpu",
    *,
    checkpoint_format: CheckpointFormat | None = None,
    arch: str | None = None,
    quick_gelu: bool | None = None,
    kps: bool | tuple[int, int] = False,
    download: bool = True,
) -> EmbeddingModel:
    """Load a CLIP model by registry name or checkpoint path.

    Args:
        source: a name from ``dgtrs-geo models`` (``dgtrs-clip-vit-b-16``, ...) or a checkpoint
            file in any supported format (DGTRS/Long-CLIP, open_clip, OpenAI, dgtrs-geo Lightning).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"`` (CUDA when available).
        checkpoint_format: read the file as this format instead of detecting it.
        arch: open_clip architecture (needed only when shapes cannot tell, e.g. custom configs).
        quick_gelu: activation; default QuickGELU except for open_clip-format checkpoints.
        kps: stretch a 77-token model's text positions with KPS: True for the defaults
            (keep=20, ratio=4), or an explicit ``(keep, ratio)``.
        download: allow downloading named weights that are not cached.

    Returns:
        An :class:`EmbeddingModel` in eval mode on ``device``.

    Raises:
        CheckpointNotFoundError: if ``source`` is neither a registered name nor an existing
            file (a ``FileNotFoundError`` too).
        WeightsUnavailableError: if named weights are not cached and cannot be downloaded.
        CheckpointError: if the file is not a readable, safe CLIP checkpoint, or its weights
            hold NaN or infinity.
        ModelError: if KPS is asked for a model that does not have 77 text positions.
        InputError: if ``device`` is not a device this machine has.

    """
    device = resolve_device(device)
    name = str(source)
    entry = REGISTRY.get(name)
    if entry is not None:
        if not download:
            path = weights_path(entry)
            if not path.is_file():
                raise WeightsUnavailableError(
                    f"weights for {name!r} are not cached at {path} and downloading is off: "
                    f"download {entry.url} and save it there"
                )
        else:
            path = download_weights(entry)
        checkpoint_format = checkpoint_format or entry.format
        arch = arch or entry.arch
        quick_gelu = entry.quick_gelu if quick_gelu is None else quick_gelu
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            names = ", ".join(REGISTRY)
            raise CheckpointNotFoundError(
                f"{name!r} is neither a registered model name ({names}) nor an existing checkpoint file"
            )
    state, found_format = read_checkpoint(path, checkpoint_format)
    if quick_gelu is None:
        quick_gelu = found_format != "open_clip"
    stretch = _kps_stretch(kps, state, path)
    clip = build_clip(state, arch=arch, quick_gelu=quick_gelu, kps=stretch, source=str(path))
    model_id = f"{entry.name if entry else path.stem}-{file_fingerprint(path)}"
    if stretch:
        keep, ratio = stretch
        length = tokens.stretched_length(tokens.CLIP_CONTEXT_LENGTH, keep, ratio)
        model_id += f"-kps{keep}x{ratio}-{length}"
    return EmbeddingModel(clip, model_id=model_id, device=device)


def _kps_stretch(
    kps: bool | tuple[int, int], state: dict[str, Tensor], path: Path
) -> tuple[int, int] | None:
    """Return the ``(keep, ratio)`` KPS asked for, or None; only 77-token weights stretch."""
    if kps is False:
        return None
    keep, ratio = (tokens.KPS_KEEP, tokens.KPS_RATIO) if kps is True else kps
    context = state["positional_embedding"].shape[0]
    if context != tokens.CLIP_CONTEXT_LENGTH:
        raise ModelError(
            f"KPS stretches {tokens.CLIP_CONTEXT_LENGTH}-token models; {path.name} already has "
            f"{context} positions: load it without KPS"
        )
    return int(keep), int(ratio)
