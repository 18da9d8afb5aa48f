"""One way to write files: whole or not at all, and a reader that can tell.

- :func:`write_file_atomic`: a temp file beside the target, written by a callback (JSON text,
  ``savefig``, ``safetensors.save_file``), fsynced, then renamed over the target.
- :func:`write_dir_atomic`: a folder written as a unit: its files go into a temp folder with a
  ``manifest.json`` (sha256 and size of every file), which is fsynced and renamed into place.
  :func:`read_dir_verified` checks the manifest and refuses a torn or edited folder with one line.

No torch here (the planning path writes profiles and plans through this module).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import LoraPlannerError

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_file_atomic(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, fsync it, and rename it onto ``path``.

    ``suffix`` keeps an extension on the temp name for writers that read it (``savefig``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    text = json_text(obj)
    write_file_atomic(path, lambda tmp: tmp.write_text(text))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def write_dir_atomic(path: str | os.PathLike, write: Callable[[Path], None], meta: Mapping[str, Any] | None = None) -> None:
    """Write a folder as a unit: ``write(tmpdir)`` fills a temp folder, a manifest of checksums is
    added, and the folder is renamed into place (replacing an older one of the same name).

    A crash at any moment leaves either the old folder or the new one, plus a stray temp folder
    (``.NAME.tmpPID``) that the next write removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    for stray in path.parent.glob(f".{path.name}.tmp*"):
        shutil.rmtree(stray, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(f)
            files[f.relative_to(tmp).as_posix()] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        manifest = {"schema_version": MANIFEST_SCHEMA, "files": files, **(dict(meta) if meta else {})}
        (tmp / MANIFEST).write_text(json_text(manifest))
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def read_dir_verified(path: str | os.PathLike, what: str = "state") -> dict:
    """The manifest of a folder written by :func:`write_dir_atomic`, after checking every file in it.

    Raises:
        LoraPlannerError: no manifest, a missing or extra file, or a checksum that differs (torn or edited).
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise LoraPlannerError(f"{what} {path}", f"a folder with a readable {MANIFEST}", "none or a damaged one",
                               "It was not written by lora-planner, or was torn; use an earlier one or start again.") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise LoraPlannerError(f"{what} {path}: {MANIFEST}", "a manifest with a 'files' table", "another JSON", "Use an earlier one.")
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {MANIFEST}
    if present != set(files):
        odd = sorted(present ^ set(files))[0]
        raise LoraPlannerError(f"{what} {path}", "the files its manifest lists", f"a difference at {odd}",
                               "The folder was torn or edited; use an earlier one or start again.")
    for name, entry in files.items():
        if sha256_file(path / name) != entry.get("sha256"):
            raise LoraPlannerError(f"{what} {path}: {name}", "the checksum in its manifest", "different contents",
                                   "The folder was torn or edited; use an earlier one or start again.")
    return manifest
