"""Model cards: what differs between models, in one small json file per model.

A card holds what the runtime needs to use a model well: its architecture
config, the sha256 and location of its weights, the automatic-generation
parameters it works best with, and the settings of its prompt pipeline; plus a
few lines of provenance.  Code never branches on a model's name: it reads the
card.  Measurement and tuning history does not belong in a card (keep it
beside the training run or in ``benchmarks/``).

Example
-------
>>> card = ModelCard(name="mine", config={"image_size": 256}, amg={"pred_iou_thresh": 0.5})
>>> ModelCard.from_json(card.to_json()) == card
True
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ModelCard", "CARD_SUFFIX"]

#: file name ending of a card (``<model>.card.json``)
CARD_SUFFIX = ".card.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_STR_FIELDS = ("name", "description", "sha256", "weights", "source", "training", "domain")
_DICT_FIELDS = ("config", "amg", "prompt_pipeline")


def _is_json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    """A deep copy with tuples as lists and mappings as dicts (what json round-trips to)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelCard:
    """The card of one model.

    Attributes
    ----------
    name : str
        Registry name (``"vit_b"``, ``"builtin"``, your own).
    config : dict
        Architecture config in the schema of :mod:`napari_sam.model.build`.
    description : str
        One line for menus and docs.
    sha256 : str
        Hex sha256 of the weights file; ``""`` when unknown (no check).
    weights : str
        Where the weights are: an ``https://`` URL (downloaded once into the
        cache folder), or a file name / path relative to the card's folder.
        ``""``: no weights of its own (pass ``checkpoint=`` to load it).
    amg : dict
        Recommended :class:`~napari_sam.AutomaticMaskGenerator` parameters;
        ``{}`` means SAM's defaults.  Explicit arguments always win.
    prompt_pipeline : dict
        Settings of the prompt pipeline (today the keyword arguments of
        :class:`~napari_sam.PromptPipeline`); ``{}`` means plain SAM prompting
        (:class:`~napari_sam.Predictor`).
    source : str
        Who made the weights (a line or two).
    training : str
        How they were made (a line or two).
    domain : str
        The images the model was made for, when narrower than SAM's: ``"grayscale"``
        makes the plugin say so when it is used on RGB images or its masks score
        low. ``""``: any image.
    path : Path or None
        The file the card was read from (not part of the json); relative
        ``weights`` are looked up beside it.
    """

    name: str
    config: dict[str, Any] = field(hash=False)
    description: str = ""
    sha256: str = ""
    weights: str = ""
    amg: dict[str, Any] = field(default_factory=dict, hash=False)
    prompt_pipeline: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = ""
    training: str = ""
    domain: str = ""
    path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"model card {self.name!r}" if isinstance(self.name, str) else "model card"
        if self.path is not None:
            where += f" ({self.path})"
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{where}: {name!r} must be a string, got {type(value).__name__}.")
        if not self.name.strip():
            raise ValueError(f"{where}: 'name' must not be empty.")
        if self.sha256 and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"{where}: 'sha256' must be 64 lowercase hex digits (or empty), got {self.sha256!r}.")
        for name in _DICT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not _is_json_value(value):
                raise ValueError(
                    f"{where}: {name!r} must be a json object (string keys; numbers, strings, booleans, "
                    f"null, lists), got {value!r:.80}."
                )
            object.__setattr__(self, name, _plain(value))  # own copy: the caller's dict stays theirs
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ json
    def to_dict(self) -> dict[str, Any]:
        """The card as a json-ready dict (a deep copy; ``path`` is not included)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "path"}

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The card as json text; also written to ``path`` when given.

        Parameters
        ----------
        path : path, optional
            File to write (by convention ``<model>.card.json``).

        Returns
        -------
        str
        """
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model card", path: Path | None = None) -> ModelCard:
        """A card from a dict; strict: unknown keys, missing keys or wrong types raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must hold a json object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)} - {"path"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{where} has unknown key(s) {unknown}; a card has {sorted(known)} (tuning history "
                "belongs beside the training run, not in the card)."
            )
        missing = [k for k in ("name", "config") if k not in data]
        if missing:
            raise ValueError(f"{where} lacks {missing}; every card needs a name and a config.")
        try:
            return cls(**dict(data), path=path)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> ModelCard:
        """Read a card from a file (a path) or from json text (a string starting with ``{``).

        Raises
        ------
        ValueError
            The file is missing or not json, or the card has unknown keys or
            wrong types; the message names the file.
        """
        text_given = isinstance(source, str) and source.lstrip().startswith("{")
        path = None if text_given else Path(source)
        where = "model card text" if path is None else f"model card {path}"
        if path is not None:
            if not path.is_file():
                raise ValueError(f"{where} does not exist.")
            text = path.read_text(encoding="utf-8")
        else:
            text = str(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid json: {exc}") from None
        return cls.from_dict(data, where=where, path=None if path is None else path.resolve())

    # ------------------------------------------------------------- weights
    @property
    def weights_url(self) -> str | None:
        """The download URL of the weights, or None when they are a local file."""
        return self.weights if self.weights.startswith(("https://", "http://")) else None

    def weights_file(self) -> Path | None:
        """The local weights file (resolved beside the card), or None for a URL or no weights."""
        if not self.weights or self.weights_url is not None:
            return None
        file = Path(self.weights).expanduser()
        if not file.is_absolute() and self.path is not None:
            file = self.path.parent / file
        return file

    def weights_available(self) -> bool:
        """True when the weights can be had: a URL, or a local file that exists."""
        file = self.weights_file()
        return self.weights_url is not None or (file is not None and file.is_file())
