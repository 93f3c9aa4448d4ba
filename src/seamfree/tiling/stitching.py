"""The stitching modes, declared once: what each is, read by the plan, the sinks, the dask driver, the CLI and
napari for their choices (the pattern of :mod:`seamfree.layers.registry`)."""

from __future__ import annotations

from dataclasses import dataclass

from seamfree.errors import ConfigError

__all__ = ["BLEND", "CROP", "STITCHINGS", "StitchingMode", "stitching"]


@dataclass(frozen=True)
class StitchingMode:
    """A way of putting tile predictions together.

    Attributes
    ----------
    name : str
        As the option (``PredictConfig.stitching``, CLI ``--stitching``) spells it.
    exact : bool
        With the measured halo, equal to the whole-image prediction (the near-exact mode and a seam grid that
        ``seamfree seams`` can read back need it).
    overlap : bool
        Neighbouring cores overlap and are weighted (``overlap``, the blend window); else each voxel comes from
        exactly one tile.
    distributed : bool
        The dask driver runs it (each tile owns its output chunks).
    summary : str
        One line for ``--help`` and napari.
    """

    name: str
    exact: bool
    overlap: bool
    distributed: bool
    summary: str


CROP = StitchingMode("crop", exact=True, overlap=False, distributed=True,
                 summary="each tile writes its core: equal to the whole-image prediction with the measured halo")
BLEND = StitchingMode("blend", exact=False, overlap=True, distributed=False,
                  summary="overlapping cores averaged with a window (MONAI-style): smooth, not exact")
STITCHINGS: dict[str, StitchingMode] = {s.name: s for s in (CROP, BLEND)}


def stitching(name: str) -> StitchingMode:
    """The stitching called ``name``; ConfigError naming the choices otherwise."""
    found = STITCHINGS.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"stitching must be one of {', '.join(map(repr, STITCHINGS))}, got {name!r}")
    return found
