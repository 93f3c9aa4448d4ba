"""Files that seamfree writes under fixed names (``report.html``, ``fix.json``, ``figures/``, a demo's training
folders), and the record that says which of them it wrote.

Each folder seamfree writes such names into holds ``.seamfree-written.json``: every name it wrote with the
sha256 of the bytes it wrote (``"folder"`` for a folder). A name that exists and is not recorded there with the
same content is the user's (a file they made, or one of ours they edited) and is never replaced: the writer
refuses, naming it, before it writes anything. Reports written before this record existed are recognised by
their content (``legacy`` predicate).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from seamfree.errors import OutputExistsError

__all__ = ["MANIFEST", "claim", "is_owned", "record", "write_owned"]

MANIFEST = ".seamfree-written.json"
_FOLDER = "folder"


def _manifest(folder: Path) -> dict[str, list[str]]:
    """name → the digests it was written with (the current one and the one before: a writer killed between
    recording and renaming leaves either)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): [str(d) for d in (v if isinstance(v, list) else [v])] for k, v in files.items()}


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_owned(path: Path, *, legacy: Callable[[Path], bool] | None = None) -> bool:
    """Whether seamfree wrote ``path`` as it is now (recorded with this content, or ``legacy(path)``)."""
    if path.is_symlink():
        return False
    recorded = _manifest(path.parent).get(path.name)
    if recorded is not None:
        if path.is_dir():
            return _FOLDER in recorded
        return path.is_file() and _digest(path) in recorded
    return legacy is not None and legacy(path)


def claim(folder: Path, names: Iterable[str], *, what: str, fix: str,
          legacy: Callable[[Path], bool] | None = None) -> None:
    """OutputExistsError when any of ``names`` (relative to ``folder``, ``a/b`` allowed) exists and is not
    seamfree's own; ``what`` names the writer, ``fix`` says what to do."""
    theirs = [name for name in names if ((path := folder / name).exists() or path.is_symlink())
              and not is_owned(path, legacy=legacy)]
    if theirs:
        shown = ", ".join(repr(n) for n in theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        raise OutputExistsError(
            f"{what} would replace {shown} in {str(folder)!r}, which seamfree did not write (or which was edited "
            f"since); nothing was written: {fix}")


def record(folder: Path, names: Iterable[str] | Mapping[str, str]) -> None:
    """Add ``names`` (files or folders directly or deeper inside ``folder``) to the records: as they are now, or
    with the digests given (name → sha256 of what is about to be written)."""
    given = names if isinstance(names, Mapping) else {}
    by_parent: dict[Path, dict[str, str]] = {}
    for name in names:
        path = folder / name
        entries = by_parent.setdefault(path.parent, {})
        entries[path.name] = given.get(name) or (_FOLDER if path.is_dir() else _digest(path))
    for parent, entries in by_parent.items():
        parent.mkdir(parents=True, exist_ok=True)
        files = _manifest(parent)
        for key, digest in entries.items():
            files[key] = [digest, *[d for d in files.get(key, []) if d != digest]][:2]
        with tempfile.NamedTemporaryFile("w", dir=parent, prefix=".seamfree-written.", suffix=".tmp",
                                         delete=False) as handle:
            json.dump({"files": files}, handle, indent=1, sort_keys=True)
        os.replace(handle.name, parent / MANIFEST)


def write_owned(folder: Path, files: Mapping[str, bytes | str], *, what: str, fix: str,
                legacy: Callable[[Path], bool] | None = None, last: str | None = None) -> None:
    """Write ``files`` (name → content) into ``folder`` after :func:`claim`-ing every name, and record them.

    ``last`` (one of the names) is written last, through a temporary name, so that it exists only when the rest
    is complete (a report's page)."""
    claim(folder, files, what=what, fix=fix, legacy=legacy)
    order: list[str] = [n for n in files if n != last] + ([last] if last is not None and last in files else [])
    data = {name: (c.encode("utf-8") if isinstance(c := files[name], str) else bytes(c)) for name in order}
    # recorded before writing (the old digest is kept beside the new): a writer killed half-way leaves files
    # that are all still known as seamfree's
    record(folder, {name: hashlib.sha256(data[name]).hexdigest() for name in order})
    for name in order:
        path = folder / name
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data[name])
        os.replace(partial, path)
