"""Safe output targets: what a run may write, replace, and when.

* :func:`check_label_name` and :func:`check_no_overlap` keep every write target
  out of the input (for ``-o``, OME-Zarr label groups, and arrays backed by a
  store such as ``da.from_zarr(path)``).
* :func:`written_by_napari_sam` recognises an output this package wrote (its
  ``napari_sam`` attributes); ``--overwrite`` replaces nothing else.
* :class:`OutputLock` is a lock file beside the output (pid, host, start time)
  that refuses a second writer and is recognised as stale when its process is gone.
* :func:`staging_path` / :func:`swap_in`: an overwrite writes the new output
  beside the old one and replaces the old only when the new run completes.

See ``docs/reliability.md``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import zarr

__all__ = [
    "OutputLockedError",
    "OutputLock",
    "check_label_name",
    "check_no_overlap",
    "store_paths",
    "written_by_napari_sam",
    "refuse_foreign",
    "staging_path",
    "swap_in",
]


class OutputLockedError(RuntimeError):
    """Another run holds the lock of this output."""


def check_label_name(name: str) -> str:
    """Refuse label names that would escape ``labels/`` (path separators, ``..``, hidden names)."""
    if not isinstance(name, str) or not name:
        raise ValueError("--label-name must be a non-empty name such as 'sam'")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise ValueError(f"--label-name {name!r} is not a plain name: use letters, digits, '-' or '_' "
                         "(no path separators, no '..', not starting with '.')")
    return name


def store_paths(data: Any) -> list[Path]:
    """Local folders/files an array reads from: zarr stores and memory-mapped files in a dask graph."""
    found: list[Path] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, zarr.Array):
            root = getattr(obj.store, "root", None)
            if root is None:  # FsspecStore on the local file system (da.from_zarr(path))
                root = getattr(obj.store, "path", None)
                root = root if isinstance(root, str) and root and Path(root).exists() else None
            if root is not None:
                found.append(Path(root) / obj.path if obj.path else Path(root))
        filename = getattr(obj, "filename", None)
        if filename and hasattr(obj, "shape"):  # numpy.memmap
            found.append(Path(filename))

    visit(data)
    graph = getattr(data, "__dask_graph__", None)
    if graph is not None:
        for value in graph().values():
            visit(value)
            if isinstance(value, tuple):
                for item in value:
                    visit(item)
    return [p.resolve() for p in found]


def check_no_overlap(target: Path, inputs: list[Path], *, what: str = "output") -> None:
    """Raise unless ``target`` and every input path are disjoint (neither inside the other)."""
    dst = Path(target).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if dst == src or dst in src.parents or src in dst.parents:
            raise ValueError(f"the {what} {target} overlaps the input {src}; choose another output path "
                             "(for labels inside an OME-Zarr image use --label-name NAME)")


def written_by_napari_sam(path: Path) -> bool:
    """Whether ``path`` is a labels array with napari-sam's own attributes."""
    path = Path(path)
    if not path.is_dir():
        return False
    if not ((path / "zarr.json").is_file() or (path / ".zarray").is_file()):
        return False
    try:
        info = zarr.open_array(str(path), mode="r").attrs.get("napari_sam")
    except Exception:
        return False
    return isinstance(info, dict) and "signature" in info


def refuse_foreign(path: Path) -> None:
    """Raise a clear error when ``path`` exists and is not a napari-sam output."""
    if Path(path).is_file():
        raise ValueError(f"the output {path} is an existing file, not a labels array written by napari-sam; "
                         "choose another output path (napari-sam never deletes files it did not write)")
    if Path(path).exists() and not written_by_napari_sam(path):
        raise ValueError(f"the output {path} exists and was not written by napari-sam, so it is not replaced; "
                         "choose another output path, or remove it yourself if it is no longer needed")


def staging_path(out_path: Path) -> Path:
    """Where an overwriting run writes its new output (beside the old one)."""
    return out_path.with_name(f".{out_path.name}.napari-sam-new")


def swap_in(new: Path, out_path: Path) -> None:
    """Replace ``out_path`` by the completed ``new`` output (the old one is removed last)."""
    old = out_path.with_name(f".{out_path.name}.napari-sam-old")
    if old.exists():
        shutil.rmtree(old)
    if out_path.exists():
        os.replace(out_path, old)
    os.replace(new, out_path)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


class OutputLock:
    """A lock file ``.<name>.lock`` beside ``out_path`` holding pid, host and start time.

    A lock whose process no longer runs on this host is stale and taken over;
    a lock of a live process (or of another host) raises :class:`OutputLockedError`.
    """

    def __init__(self, out_path: Path) -> None:
        self.path = Path(out_path).with_name(f".{Path(out_path).name}.lock")
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, owner: dict | None) -> bool:
        if owner is None:  # unreadable: a writer died between create and write, or someone else's file
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except OSError:
                return True
        if owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if self._stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                # unreadable owner: the other run has created the lock but not yet written it
                who = "another napari-sam run (just starting)" if owner is None else (
                    f"another napari-sam run (pid {owner.get('pid')} on host {owner.get('host')}, started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('started', 0)))})")
                raise OutputLockedError(
                    f"{self.path.with_name(self.path.name[1:-5])} is being written by {who}; wait for it to "
                    f"finish or choose another output. If that run is gone, delete {self.path}") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(info)
            self.held = True
            return self
        raise OutputLockedError(f"could not take the lock {self.path}; delete it if no run is writing")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
