"""The measured receptive field, tile probe and forward memory, kept on disk between processes: the second
``seamfree predict`` on a model skips these measurements (seconds in 2D, up to tens of seconds in 3D, before any
tile).

One small JSON file per model and option set, named by a sha256 of the model's identity (its parameters' digest,
its structure, kind and class: :mod:`seamfree.models.identity`), the options that change the measurement and
seamfree's version, in ``$SEAMFREE_CACHE/receptive-fields`` (default ``~/.cache/seamfree``). Each file is signed
with an HMAC under a key private to the user (``~/.config/seamfree/cache-key``, mode 600): a file edited or
written by anyone else (a shared cache folder) is ignored and measured again. Only numbers are read back,
validated: a file that does not parse, is not signed, or does not describe a receptive field is ignored, never
trusted, and nothing in it can run code. ``SEAMFREE_CACHE=off`` disables the cache.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from seamfree._version import __version__
from seamfree.models.probe import TileProbe
from seamfree.models.receptive import ReceptiveField

__all__ = ["cache_folder", "load_field", "load_probe", "load_record", "store_field", "store_probe", "store_record"]

logger = logging.getLogger(__name__)


def cache_folder() -> Path | None:
    """Where receptive fields are kept (None: disabled by ``SEAMFREE_CACHE=off``)."""
    root = os.environ.get("SEAMFREE_CACHE", "")
    if root.lower() in ("off", "0", "false", "none"):
        return None
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seamfree"
    return base / "receptive-fields"


def _secret() -> bytes | None:
    """The user's private signing key, created on first use (None: it cannot be read or created)."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "seamfree"
    path = base / "cache-key"
    try:
        if not path.is_file():
            base.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_suffix(f".{os.getpid()}.tmp"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
            os.replace(path.with_suffix(f".{os.getpid()}.tmp"), path)
        if path.stat().st_mode & 0o077:
            logger.warning("the cache signing key %s is readable by others; not using the cache", path)
            return None
        secret = path.read_bytes()
    except OSError as exc:
        logger.debug("no cache signing key (%s): not caching", exc)
        return None
    return secret if len(secret) >= 16 else None


def _signature(secret: bytes, name: str, data: dict[str, Any]) -> str:
    payload = json.dumps([name, data], sort_keys=True).encode()
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def _path(key: tuple[Any, ...]) -> Path | None:
    folder = cache_folder()
    if folder is None:
        return None
    digest = hashlib.sha256(json.dumps([__version__, *map(str, key)]).encode()).hexdigest()
    return folder / f"{digest[:32]}.json"


def _ints(value: Any, dims: int) -> tuple[int, ...] | None:
    if isinstance(value, list) and len(value) == dims and all(isinstance(v, int) and v >= 0 for v in value):
        return tuple(value)
    return None


def load_field(key: tuple[Any, ...], dims: int) -> ReceptiveField | None:
    """The receptive field stored for ``key`` (None: none, or a file that is not a valid one)."""
    data = load_record(key)
    if data is None:
        return None
    radius, effective = _ints(data.get("radius"), dims), _ints(data.get("effective_radius"), dims)
    stride = _ints(data.get("network_stride"), dims)
    context = data.get("context")
    context_t = None if context is None else _ints(context, dims)
    tolerance = data.get("tolerance")
    flags = data.get("tile_dependent"), data.get("linearized")
    if radius is None or effective is None or stride is None or (context is not None and context_t is None) \
            or not isinstance(tolerance, int | float) or not all(isinstance(f, bool) for f in flags):
        logger.debug("ignoring an invalid receptive-field cache file (key %s)", key)
        return None
    return ReceptiveField(radius, effective, stride, bool(flags[0]), float(tolerance), context_t, bool(flags[1]))


def store_field(key: tuple[Any, ...], field: ReceptiveField) -> None:
    """Keep ``field`` for ``key`` (silently skipped where the cache folder cannot be written)."""
    _store(key, {"radius": list(field.radius), "effective_radius": list(field.effective_radius),
                 "network_stride": list(field.network_stride), "tile_dependent": field.tile_dependent,
                 "tolerance": field.tolerance, "context": None if field.context is None else list(field.context),
                 "linearized": field.linearized})


def load_probe(key: tuple[Any, ...], dims: int) -> TileProbe | None:
    """The tile probe stored for ``key`` (None: none, or not a valid one)."""
    data = load_record(key)
    if data is None:
        return None
    window, shift, halo = (_ints(data.get(k), dims) for k in ("window", "shift", "halo"))
    numbers = [v for k in ("max_abs", "scale", "tolerance") if isinstance(v := data.get(k), int | float)]
    if window is None or shift is None or halo is None or len(numbers) != 3:
        return None
    return TileProbe(window, shift, halo, *(float(v) for v in numbers))


def store_probe(key: tuple[Any, ...], probe: TileProbe) -> None:
    """Keep ``probe`` for ``key``."""
    _store(key, {"window": list(probe.window), "shift": list(probe.shift), "halo": list(probe.halo),
                 "max_abs": probe.max_abs, "scale": probe.scale, "tolerance": probe.tolerance})


def load_record(key: tuple[Any, ...]) -> dict[str, Any] | None:
    """The measurement stored for ``key`` as a JSON object (the caller validates its fields)."""
    path = _path(key)
    secret = _secret() if path is not None else None
    if path is None or secret is None:
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    data = stored.get("data") if isinstance(stored, dict) else None
    signature = stored.get("signature") if isinstance(stored, dict) else None
    if not isinstance(data, dict) or not isinstance(signature, str):
        logger.debug("ignoring the unsigned cache file %s (written by seamfree < 0.4)", path)
        return None
    if not hmac.compare_digest(signature, _signature(secret, path.name, data)):
        logger.warning("ignoring the cache file %s: it is not signed by this user's key (edited, or written by "
                       "someone else); measuring again", path)
        return None
    return data


def store_record(key: tuple[Any, ...], data: dict[str, Any]) -> None:
    """Keep the JSON object ``data`` for ``key``."""
    _store(key, data)


def _store(key: tuple[Any, ...], data: dict[str, Any]) -> None:
    path = _path(key)
    secret = _secret() if path is not None else None
    if path is None or secret is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump({"data": data, "signature": _signature(secret, path.name, data)}, handle)
        os.replace(handle.name, path)
    except OSError as exc:
        logger.debug("receptive field not cached (%s)", exc)
