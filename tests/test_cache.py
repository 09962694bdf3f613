"""One cache location for models and indexes: environment variables, ``~`` and platform defaults."""

import sys
from pathlib import Path

import pytest

import dgtrs_geo.models
from dgtrs_geo.cache import cache_dir
from dgtrs_geo.models.registry import REGISTRY, download_weights, weights_path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake home folder and an environment without any cache variable."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for name in ("DGTRS_GEO_CACHE", "XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    return folder


def test_dgtrs_geo_cache_expands_the_home_folder(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("DGTRS_GEO_CACHE", "~/x")
    assert cache_dir() == home / "x"
    assert cache_dir("models") == home / "x" / "models"
    assert cache_dir("indexes") == home / "x" / "indexes"


def test_dgtrs_geo_cache_wins_over_xdg(home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "mine"))
    assert cache_dir("models") == tmp_path / "mine" / "models"


def test_xdg_cache_home_gets_a_dgtrs_geo_folder(home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dgtrs-geo"
    monkeypatch.setenv("XDG_CACHE_HOME", "~/.xdg-cache")
    assert cache_dir("indexes") == home / ".xdg-cache" / "dgtrs-geo" / "indexes"


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux", (".cache", "dgtrs-geo")),
        ("darwin", ("Library", "Caches", "dgtrs-geo")),
    ],
)
def test_platform_default_under_home(home: Path, monkeypatch, platform: str, expected) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    assert cache_dir() == home.joinpath(*expected)
    assert cache_dir("models") == home.joinpath(*expected, "models")


def test_windows_default_uses_local_app_data(home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    assert cache_dir("models") == tmp_path / "AppData" / "Local" / "dgtrs-geo" / "Cache" / "models"


def test_models_live_in_the_models_cache(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("DGTRS_GEO_CACHE", "~/x")
    entry = REGISTRY["dgtrs-clip-vit-b-16"]
    assert weights_path(entry) == home / "x" / "models" / "DGTRS-CLIP-ViT-B-16.pt"
    # The old public name still resolves to the one rule.
    assert dgtrs_geo.models.cache_dir is cache_dir


def test_download_lands_under_the_expanded_cache(home: Path, tmp_path: Path, monkeypatch) -> None:
    import requests

    class Response:
        headers: dict[str, str] = {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self) -> None:
            pass

        def iter_content(self, chunk_size: int):
            yield b"weights"

    monkeypatch.setattr(requests, "get", lambda *args, **kwargs: Response())
    monkeypatch.setenv("DGTRS_GEO_CACHE", "~/x")
    monkeypatch.chdir(tmp_path)
    path = download_weights(REGISTRY["longclip-b"], progress=False)
    assert path == home / "x" / "models" / "longclip-B.pt"
    assert path.read_bytes() == b"weights"
    # Nothing lands in a literal "~" folder of the working directory.
    assert not (tmp_path / "~").exists()
