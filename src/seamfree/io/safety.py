"""What protects the user's data: outputs never over the input, ``--overwrite`` only of seamfree's own outputs.

A path output is seamfree's own when it carries seamfree's mark: an OME-Zarr output its fingerprint in the
group's ``seamfree`` attributes (or, written before 0.3, a ``.seamfree/fingerprint.json`` inside it), a TIFF
the :data:`TIFF_SIGNATURE` key in its shaped metadata (the digest of its fingerprint, so that a rerun of the
same prediction knows a complete TIFF as its own). Nothing else is ever deleted, and nothing is deleted through
a symbolic link.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from seamfree.errors import OutputExistsError, require

__all__ = ["SIGNATURE_TAG", "TIFF_SIGNATURE", "check_not_input", "file_identity", "fingerprint_digest",
           "is_seamfree_tiff", "remove_own_output", "resolved_path", "tiff_signature"]

# How --overwrite knows a TIFF is its own: a private tag of the first page holding "seamfree:" and the digest of
# the run's fingerprint (OME-TIFF outputs), or this key in the shaped metadata (TIFFs of seamfree < 0.3).
TIFF_SIGNATURE = "seamfree"
SIGNATURE_TAG = 65000


def resolved_path(path: str | None) -> str | None:
    """Return a local path made absolute with links resolved (URLs and None as they are): one input, one name."""
    if path is None or "://" in path:
        return path
    return os.path.realpath(path)


_METADATA_DOCUMENTS = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


def file_identity(path: str | os.PathLike[str] | None) -> tuple[Any, ...] | None:
    """What tells one file at ``path`` from another that replaced it: device, inode, size and modification time
    of the file, or for a folder (a zarr store) of the folder and of the metadata documents at its top. None for
    URLs, arrays and paths that do not exist. Caches of opened inputs are keyed by it."""
    if path is None or "://" in str(path):
        return None
    root = Path(path)

    def stamp(item: Path) -> tuple[Any, ...] | None:
        try:
            stat = item.stat()
        except OSError:
            return None
        return (str(item.relative_to(root)) if item != root else ".", stat.st_dev, stat.st_ino, stat.st_size,
                stat.st_mtime_ns)

    top = stamp(root)
    if top is None or not root.is_dir():
        return top
    # the folder's own stamp changes when an entry in it is replaced; its documents when they are rewritten. Never a
    # listing: the folder of a zarr v2 array holds every chunk file, and this runs once per task
    return (top, *(s for s in (stamp(root / name) for name in _METADATA_DOCUMENTS) if s is not None))


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """Return the sha256 of a prediction's fingerprint: the signature a TIFF output carries."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def tiff_signature(path: Path) -> Any:
    """Return seamfree's signature in the TIFF ``path`` (None when it has none or is no readable TIFF)."""
    tifffile = require("tifffile", "tiff")
    try:
        with tifffile.TiffFile(str(path)) as tiff:  # type: ignore[attr-defined]
            tag = tiff.pages.first.tags.get(SIGNATURE_TAG)
            signed = tag.value if tag is not None else None  # read while the file is open
            metadata = tiff.shaped_metadata or ()
    except Exception:  # not a TIFF at all, or unreadable: certainly not ours
        return None
    if isinstance(signed, str) and signed.startswith(TIFF_SIGNATURE + ":"):
        return signed.removeprefix(TIFF_SIGNATURE + ":")
    return next((m.get(TIFF_SIGNATURE) for m in metadata if isinstance(m, dict) and m.get(TIFF_SIGNATURE)), None)


def is_seamfree_tiff(path: Path) -> bool:
    """Whether ``path`` is a TIFF that seamfree wrote (it carries seamfree's signature)."""
    return tiff_signature(path) is not None


def _describe(path: Path) -> str:
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)!r}"
    if path.is_dir():
        entries = sum(1 for _ in path.iterdir())
        kind = "a zarr store" if (path / "zarr.json").exists() or (path / ".zgroup").exists() else "a folder"
        return f"{kind} with {entries} entr{'y' if entries == 1 else 'ies'}"
    return f"a file of {path.stat().st_size} bytes"


def remove_own_output(path: Path, *, written_by_seamfree: bool) -> None:
    """Delete ``path`` for ``--overwrite``, only if seamfree wrote it; OutputExistsError naming what is there."""
    if path.is_symlink():
        raise OutputExistsError(
            f"output {str(path)!r} is {_describe(path)}; --overwrite never deletes through a link: pass the real "
            f"path ({str(path.resolve())!r}) if that is a seamfree output you want replaced"
        )
    if not written_by_seamfree:
        raise OutputExistsError(
            f"output {str(path)!r} is {_describe(path)} that seamfree did not write; --overwrite only replaces "
            "seamfree's own outputs: choose another output path, or move that data away yourself"
        )
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def check_not_input(output: str | os.PathLike[str], input_path: str | None) -> None:
    """Raise OutputExistsError when ``output`` is the input, lies inside it, or contains it (paths resolved)."""
    if input_path is None or "://" in str(input_path):
        return
    out, source = Path(output).resolve(), Path(input_path).resolve()
    if out == source or out.is_relative_to(source) or source.is_relative_to(out):
        raise OutputExistsError(
            f"the output {str(output)!r} would overwrite the input {input_path!r} (they resolve to {str(out)!r} and "
            f"{str(source)!r}); write the prediction to another path"
        )
