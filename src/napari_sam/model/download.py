"""Where a card's weights come from: a file beside the card, or a download (pooch) into the cache folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from napari_sam.model.cards import ModelCard
from napari_sam.model.checkpoint import CheckpointError

__all__ = ["CACHE_ENV", "cache_dir", "fetch_weights", "sha256_of"]

CACHE_ENV = "NAPARI_SAM_CACHE"


def cache_dir() -> Path:
    """Checkpoint cache folder: ``$NAPARI_SAM_CACHE`` or pooch's per-user cache."""
    return _default_cache_dir()


def _default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam"))


def fetch_weights(
    card: ModelCard, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = False
) -> Path:
    """The verified local weights file of ``card``: beside the card, or downloaded once into the cache.

    Raises
    ------
    CheckpointError
        The file is missing or has another sha256 than the card's, or the card names no weights.
    OSError
        The download failed (no network...).
    """
    file = card.weights_file()
    if file is not None:  # beside the card (shipped with the package, or a user's card)
        if not file.is_file():
            raise CheckpointError(
                f"The weights of model {card.name!r} ({file}, named by its card) are missing from this "
                "install. Use an official checkpoint instead, e.g. load_model('vit_b') to download SAM "
                "ViT-B once, or load_model('vit_t', checkpoint='path/to/mobile_sam.pt') for a local file."
            )
        _verify_hash(file, card.sha256)
        return file
    url = card.weights_url
    if url is None:
        raise CheckpointError(
            f"The card of model {card.name!r} names no weights; pass checkpoint=<path to its weights>."
        )
    import pooch

    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    filename = url.rsplit("/", 1)[-1]
    known_hash = f"sha256:{card.sha256}" if card.sha256 else None
    try:
        path = pooch.retrieve(url, known_hash=known_hash, fname=filename, path=folder, progressbar=progress)
    except ValueError as exc:  # pooch: hash mismatch
        raise CheckpointError(
            f"The download of {url} does not have the expected hash {known_hash} "
            f"({exc}). The file was discarded; retry, or download it yourself and pass "
            "checkpoint=<path>."
        ) from exc
    except Exception as exc:  # network errors (requests), permissions...
        raise OSError(
            f"Could not download the {card.name!r} checkpoint from {url}: {exc}. Without "
            f"internet, copy {filename} into {folder} (or set ${CACHE_ENV}) or pass "
            "checkpoint=<local path>."
        ) from exc
    return Path(path)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_hash(path: Path, expected: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    if not expected:
        return
    digest = sha256_of(path)
    if digest != expected.lower():
        raise CheckpointError(
            f"{path} has sha256 {digest}, expected {expected}: the file is corrupt "
            "or was replaced; reinstall napari-sam."
        )
