"""Is this weights file the published one?  sha256 against the known hashes, then a strict load.

:func:`verify_weights` backs ``napari-sam models verify``.  A file whose sha256
equals a registered card's hash is that model's published file; a file that
carries the published file's name but another hash is corrupt or replaced; any
other file is unknown (a fine-tuned model, say) and is only checked to load
strictly into its architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from napari_sam.model import download, registry
from napari_sam.model.cards import ModelCard
from napari_sam.model.checkpoint import CheckpointError, read_checkpoint, shape_signature

__all__ = ["Verdict", "file_sha256", "verify_weights"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`verify_weights`.

    Attributes
    ----------
    status : {"match", "mismatch", "unknown"}
        ``match``: the file is ``name``'s published weights and loads strictly;
        ``mismatch``: it should be ``name``'s published file but its hash differs;
        ``unknown``: no known hash, and it loads strictly as ``name``.
    name : str
        The model it was compared with or loaded as.
    path : Path
    sha256 : str
        The file's hash.
    expected : str
        ``name``'s published hash (``""`` for an unknown file).
    """

    status: str
    name: str
    path: Path
    sha256: str
    expected: str = ""

    @property
    def ok(self) -> bool:
        """False only for a mismatch."""
        return self.status != "mismatch"

    @property
    def message(self) -> str:
        """One line for users."""
        if self.status == "match":
            return f"OK: {self.path} matches {self.name} (sha256 {self.sha256[:16]}...) and loads strictly"
        if self.status == "mismatch":
            return (f"{self.path}: hash differs from {self.name}'s published hash (file sha256 {self.sha256}, "
                    f"published {self.expected}); the file is damaged or was replaced: delete it and run "
                    f"`napari-sam models fetch {self.name}`")
        return (f"unknown file {self.path} (sha256 {self.sha256[:16]}..., not a published checkpoint), "
                f"loads strictly as {self.name}: OK")


#: hex sha256 of a file's content (the digest the registry's cards publish)
file_sha256 = download.sha256_of


def _published_name(card: ModelCard) -> str:
    return (card.weights_url or card.weights).rsplit("/", 1)[-1]


def _local_weights(card: ModelCard) -> Path:
    """Where the weights of a registered card are on this machine (beside the card, or in the cache)."""
    file = card.weights_file()
    if file is None and card.weights_url is not None:
        file = download.cache_dir() / _published_name(card)
    if file is None or not file.is_file():
        raise FileNotFoundError(f"the weights of {card.name!r} are not on this machine; run "
                                f"`napari-sam models fetch {card.name}` first, or verify a file path")
    return file


def _architecture(path: Path, model: str | os.PathLike[str] | None) -> str | ModelCard:
    """The model to load an unknown file as: ``model``, else the registered one with the file's tensor shapes."""
    if model is not None:
        return registry.model_card(model)
    shapes = {k: tuple(v.shape) for k, v in read_checkpoint(path).items()}
    for name, card in registry.REGISTRY.items():
        try:
            if shape_signature(card.config) == shapes:
                return name
        except (ValueError, TypeError, KeyError, RuntimeError):
            continue  # a broken user-registered card must not hide the others
    raise CheckpointError(f"{path} fits no registered model (its tensors have other names or shapes); pass "
                          "--model NAME (or a model card) to name its architecture")


def verify_weights(target: str | os.PathLike[str], *, model: str | os.PathLike[str] | None = None) -> Verdict:
    """Check a weights file (or a registered model's local weights) against the known sha256.

    Parameters
    ----------
    target : path or str
        A weights file, or the name of a registered model (its downloaded or
        shipped file is checked).
    model : str or path, optional
        For a file with no known hash: the registry name or card file of its
        architecture (default: the registered model whose tensor shapes it has).

    Returns
    -------
    Verdict
        ``match``, ``mismatch`` or ``unknown`` (see :class:`Verdict`); a file is
        loaded strictly (missing, unexpected, mis-shaped or non-finite tensors
        raise) unless its hash differs from the one it claims.

    Raises
    ------
    CheckpointError
        An unknown file that does not load strictly, or fits no registered model.
    FileNotFoundError
        ``target`` is neither a file nor a model whose weights are on this machine.
    """
    path = Path(target)
    claimed: ModelCard | None = None
    if not path.is_file():
        if isinstance(target, str) and target in registry.REGISTRY:
            claimed = registry.get_card(target)
            path = _local_weights(claimed)
        else:
            raise FileNotFoundError(f"{target} is neither a file nor a registered model "
                                    f"({', '.join(registry.available_models())})")
    digest = file_sha256(path)
    cards = list(registry.REGISTRY.values())
    if model is not None and not (isinstance(model, str) and model in registry.REGISTRY):
        cards.append(registry.model_card(model))  # a user's card file with its sha256
    if claimed is None:
        matching = [c for c in cards if c.sha256 and c.sha256 == digest]
        if matching:
            claimed = matching[0]
        else:
            same_name = [c for c in cards if c.sha256 and _published_name(c) == path.name]
            claimed = same_name[0] if same_name else None
    if claimed is not None and claimed.sha256:
        if claimed.sha256 != digest:
            return Verdict("mismatch", claimed.name, path, digest, claimed.sha256)
        registry.load_model(claimed, checkpoint=path, device="cpu")
        return Verdict("match", claimed.name, path, digest, claimed.sha256)
    arch = claimed if claimed is not None else _architecture(path, model)
    registry.load_model(arch, checkpoint=path, device="cpu")
    return Verdict("unknown", arch if isinstance(arch, str) else arch.name, path, digest)
