"""Named pretrained models: where their weights come from and where they are cached.

Weights download on first use into ``cache_dir("models")`` (see :mod:`dgtrs_geo.cache`), are
checked against their sha256 where it is published, and are written atomically so an interrupted
download leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Re-exported: ``dgtrs_geo.models.cache_dir`` was public before dgtrs_geo.cache existed.
from ..cache import cache_dir
from ..errors import ModelError, OutputError
from ..tokens import CLIP_CONTEXT_LENGTH, DGTRS_CONTEXT_LENGTH
from .checkpoints import CheckpointFormat

__all__ = [
    "REGISTRY",
    "ModelEntry",
    "WeightsUnavailableError",
    "cache_dir",
    "download_weights",
    "registry_status",
    "weights_path",
]

_HF = "https://huggingface.co"
_OPENAI = "https://openaipublic.azureedge.net/clip/models"


@dataclass(frozen=True)
class ModelEntry:
    """A pretrained model the project knows by name."""

    name: str
    url: str
    filename: str
    format: CheckpointFormat
    arch: str | None = None  #: open_clip config name; None = infer from the weights
    quick_gelu: bool = True  #: activation the published inference code uses
    sha256: str | None = None  #: published digest, checked after download
    description: str = ""


def _openai(name: str, tag: str, digest: str) -> ModelEntry:
    return ModelEntry(
        name=name,
        url=f"{_OPENAI}/{digest}/{tag}.pt",
        filename=f"openai-{tag}.pt",
        format="openai",
        sha256=digest,
        description=f"OpenAI CLIP {tag} (77 tokens; TorchScript archive)",
    )


_ENTRIES = [
    ModelEntry(
        "dgtrs-clip-vit-b-16",
        f"{_HF}/MitsuiChen14/DGTRS-CLIP-ViT-B-16/resolve/main/DGTRS-CLIP-ViT-B-16.pt",
        "DGTRS-CLIP-ViT-B-16.pt",
        "dgtrs",
        arch="dgtrs-vit-b-16",
        description="DGTRS-CLIP ViT-B/16, 248 tokens (default)",
    ),
    ModelEntry(
        "dgtrs-clip-vit-l-14",
        f"{_HF}/MitsuiChen14/DGTRS-CLIP-ViT-L-14/resolve/main/DGTRS-CLIP-ViT-L-14.pt",
        "DGTRS-CLIP-ViT-L-14.pt",
        "dgtrs",
        arch="dgtrs-vit-l-14",
        description="DGTRS-CLIP ViT-L/14, 248 tokens",
    ),
    ModelEntry(
        "longclip-b",
        f"{_HF}/BeichenZhang/LongCLIP-B/resolve/main/longclip-B.pt",
        "longclip-B.pt",
        "dgtrs",
        arch="dgtrs-vit-b-16",
        description="Long-CLIP ViT-B/16, 248 tokens",
    ),
    ModelEntry(
        "longclip-l",
        f"{_HF}/BeichenZhang/LongCLIP-L/resolve/main/longclip-L.pt",
        "longclip-L.pt",
        "dgtrs",
        arch="dgtrs-vit-l-14",
        description="Long-CLIP ViT-L/14, 248 tokens",
    ),
    *(
        ModelEntry(
            f"georsclip-{tag.lower()}",
            f"{_HF}/Zilun/GeoRSCLIP/resolve/main/ckpt/RS5M_{tag}.pt",
            f"RS5M_{tag}.pt",
            "open_clip",
            arch=tag,
            quick_gelu=False,
            description=f"GeoRSCLIP {tag} (RS5M), 77 tokens",
        )
        for tag in ("ViT-B-32", "ViT-L-14", "ViT-H-14")
    ),
    *(
        ModelEntry(
            f"remoteclip-{tag.lower()}",
            f"{_HF}/chendelong/RemoteCLIP/resolve/main/RemoteCLIP-{tag}.pt",
            f"RemoteCLIP-{tag}.pt",
            "open_clip",
            arch=tag,
            quick_gelu=False,
            description=f"RemoteCLIP {tag}, 77 tokens",
        )
        for tag in ("ViT-B-32", "ViT-L-14", "RN50")
    ),
    _openai(
        "openai-vit-b-32",
        "ViT-B-32",
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    ),
    _openai(
        "openai-vit-b-16",
        "ViT-B-16",
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    ),
    _openai(
        "openai-vit-l-14",
        "ViT-L-14",
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    ),
]

#: Every named model, by name.
REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in _ENTRIES}


class WeightsUnavailableError(ModelError, RuntimeError):
    """Named weights are not cached and could not be downloaded (or arrived corrupt)."""


def weights_path(entry: ModelEntry) -> Path:
    """Return where ``entry``'s weights live in the cache (whether or not they are there)."""
    return cache_dir("models") / entry.filename


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def download_weights(
    entry: ModelEntry,
    *,
    progress: bool = True,
    report: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Return the cached weights of ``entry``, downloading and checking them first if needed.

    Args:
        entry: the named model.
        progress: show a progress bar on stderr.
        report: called after each downloaded chunk with the bytes so far and the total size
            (``None`` when the server does not say), e.g. to show a percentage in a GUI.

    Raises:
        WeightsUnavailableError: offline or on any download failure, naming the file to fetch and
            where to put it, or if the downloaded file does not match the published sha256.
        OutputError: if the cache folder cannot be created.

    """
    target = weights_path(entry)
    if target.is_file():
        return target
    import requests
    from tqdm.auto import tqdm

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create the model cache {target.parent} ({error.strerror or error}): set "
            "DGTRS_GEO_CACHE to a writable folder"
        ) from error
    partial = target.with_name(target.name + ".partial")
    try:
        with requests.get(entry.url, stream=True, timeout=30) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with (
                partial.open("wb") as file,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=entry.filename,
                    disable=not progress,
                ) as bar,
            ):
                done = 0
                for chunk in response.iter_content(chunk_size=1 << 20):
                    file.write(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
                    if report is not None:
                        report(done, total)
    except (requests.RequestException, OSError) as error:
        partial.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"weights for {entry.name!r} are not cached and could not be downloaded "
            f"({type(error).__name__}). Download {entry.url} and save it as {target} "
            "(or set DGTRS_GEO_CACHE), or pass a local checkpoint path instead of the name."
        ) from error
    if entry.sha256 is not None and (found := _sha256(partial)) != entry.sha256:
        partial.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"download of {entry.name!r} is corrupt: sha256 {found} != published {entry.sha256}. "
            f"Try again, or download {entry.url} yourself and save it as {target}."
        )
    partial.replace(target)
    return target


def registry_status() -> list[dict[str, object]]:
    """Describe every named model and whether its weights are in the cache."""
    rows: list[dict[str, object]] = []
    for entry in REGISTRY.values():
        path = weights_path(entry)
        rows.append(
            {
                "name": entry.name,
                "arch": entry.arch or "inferred",
                "format": entry.format,
                "context_length": (
                    DGTRS_CONTEXT_LENGTH if entry.format == "dgtrs" else CLIP_CONTEXT_LENGTH
                ),
                "cached": path.is_file(),
                "path": str(path),
                "url": entry.url,
                "sha256": entry.sha256,
                "description": entry.description,
            }
        )
    return rows
