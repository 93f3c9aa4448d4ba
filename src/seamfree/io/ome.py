"""OME-NGFF metadata of outputs, built and validated by a maintained model library (``ome-zarr-models``).

An output carries the input's spatial calibration: voxel size (scale), origin (translation) and units, so that
it overlays its image in napari, neuroglancer or any OME-Zarr tool. The channel axis has scale 1 and
translation 0; every array has ``dimension_names`` (``c``, then ``z``, ``y``, ``x``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seamfree.errors import ConfigError, require

__all__ = ["Calibration", "dimension_names", "normalized_unit", "ome_image_attrs", "read_calibration"]

# the NGFF names for the units people type
_UNIT_ALIASES = {"um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
                 "microns": "micrometer", "nm": "nanometer",
                 "mm": "millimeter", "pm": "picometer", "A": "angstrom", "m": "meter"}
_SPACE_UNITS = ("angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
                "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter",
                "nanometer", "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter",
                "zeptometer", "zettameter")


@dataclass(frozen=True)
class Calibration:
    """Physical placement of the spatial axes: voxel size, origin and unit per axis (None: not known)."""

    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None

    def with_defaults(self, voxel_size: Sequence[float] | None, unit: str | None, dims: int) -> Calibration:
        """Fill what the input does not say from ``voxel_size`` and ``unit`` (CLI ``--voxel-size``, ``--unit``)."""
        scale = self.scale
        if scale is None and voxel_size is not None:
            values = tuple(float(v) for v in voxel_size)
            if len(values) == 1:
                values = values * dims
            if len(values) != dims or any(not v > 0 for v in values):
                raise ConfigError(f"voxel_size needs {dims} positive values (or one for every axis), got "
                                  f"{tuple(voxel_size)}")
            scale = values
        units = self.units
        if (units is None or all(u is None for u in units)) and unit is not None:
            units = (normalized_unit(unit),) * dims
        return Calibration(scale, self.translation, units)


def normalized_unit(unit: str) -> str:
    """The NGFF name of a space unit ("um" → "micrometer"); ConfigError for anything else."""
    name = _UNIT_ALIASES.get(unit, unit)
    if name not in _SPACE_UNITS:
        raise ConfigError(f"unknown space unit {unit!r}; use an OME-NGFF unit such as micrometer (um), nanometer "
                          "(nm) or millimeter (mm)")
    return name


def dimension_names(spatial_dims: int) -> list[str]:
    """``["c", "z", "y", "x"]`` for 3D, ``["c", "y", "x"]`` for 2D."""
    return ["c", *"zyx"[-spatial_dims:]]


def ome_image_attrs(spatial_dims: int, calibration: Calibration | None = None, *,
                    name: str = "seamfree prediction", levels: int = 1,
                    downsampling: str = "mean") -> dict[str, Any]:
    """Return the ``ome`` attributes of an image of ``levels`` resolution levels (arrays ``0``, ``1``, ...; see
    :mod:`seamfree.io.pyramid`), validated by ``ome-zarr-models``."""
    require("ome_zarr_models", "zarr")
    from ome_zarr_models.v05.coordinate_transformations import VectorScale, VectorTranslation
    from ome_zarr_models.v05.image import Axis, Dataset, ImageAttrs, Multiscale

    from seamfree.io.pyramid import level_transforms

    calibration = calibration or Calibration()
    units = calibration.units or (None,) * spatial_dims
    axes = [Axis(name="c", type="channel")] + [Axis(name=n, type="space", unit=u)
                                                 for n, u in zip("zyx"[-spatial_dims:], units)]
    scale0 = [1.0, *(calibration.scale or (1.0,) * spatial_dims)]
    translation0 = [0.0, *(calibration.translation or (0.0,) * spatial_dims)]
    datasets = []
    for level in range(levels):
        scale, translation = level_transforms(scale0, translation0, level, downsampling)  # type: ignore[arg-type]
        transforms: tuple[Any, ...] = (VectorScale(type="scale", scale=scale),)
        if any(translation):
            transforms += (VectorTranslation(type="translation", translation=translation),)
        datasets.append(Dataset(path=str(level), coordinateTransformations=transforms))
    multiscale = Multiscale(axes=axes, datasets=tuple(datasets), name=name)
    return ImageAttrs(version="0.5", multiscales=[multiscale]).model_dump(mode="json", exclude_none=True)


def read_calibration(image: dict[str, Any], level: dict[str, Any]) -> Calibration:
    """The spatial calibration of one level of an OME-NGFF (0.4 or 0.5) multiscale image: the level's scale and
    translation composed with the multiscale's own transformations, and the axes' units."""
    axes = [a if isinstance(a, dict) else {"name": a} for a in image.get("axes", [])]
    spatial = [i for i, a in enumerate(axes)
               if a.get("type", "space" if str(a.get("name")) in ("z", "y", "x") else "") == "space"]
    n = len(axes)
    scale, translation = [1.0] * n, [0.0] * n
    for transforms in (level.get("coordinateTransformations", []), image.get("coordinateTransformations", [])):
        for transform in transforms:
            if transform.get("type") == "scale" and len(transform.get("scale", [])) == n:
                scale = [a * float(b) for a, b in zip(scale, transform["scale"])]
                translation = [t * float(b) for t, b in zip(translation, transform["scale"])]
            elif transform.get("type") == "translation" and len(transform.get("translation", [])) == n:
                translation = [t + float(b) for t, b in zip(translation, transform["translation"])]
    if not spatial:
        return Calibration()
    units = tuple(axes[i].get("unit") for i in spatial)
    return Calibration(tuple(scale[i] for i in spatial), tuple(translation[i] for i in spatial),
                       units if any(u is not None for u in units) else None)
