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

__all__ = ["NGFF_VERSIONS", "Calibration", "TimeCalibration", "dimension_names", "labels_group_attrs",
           "normalized_unit", "ome_image_attrs", "ome_tiff_metadata", "read_calibration", "time_calibration"]

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


def dimension_names(spatial_dims: int, time: bool = False) -> list[str]:
    """``["c", "z", "y", "x"]`` for 3D, ``["c", "y", "x"]`` for 2D; ``["t", "c", ...]`` for a time series."""
    return [*(["t"] if time else []), "c", *"zyx"[-spatial_dims:]]


NGFF_VERSIONS = ("0.5", "0.4")
# a colour per class for label layers (0, the background, is transparent)
_LABEL_COLOURS = ((0, 0, 0, 0), (255, 0, 255, 255), (0, 255, 0, 255), (0, 128, 255, 255), (255, 200, 0, 255),
                  (255, 64, 64, 255), (0, 255, 255, 255), (160, 80, 255, 255))
_CHANNEL_COLOURS = ("FFFFFF", "FF00FF", "00FF00", "00FFFF", "FFFF00", "FF0000", "0000FF")


def ome_image_attrs(spatial_dims: int, calibration: Calibration | None = None, *,
                    name: str = "seamfree prediction", levels: int = 1,
                    downsampling: str = "mean", channel_names: Sequence[str] | None = None,
                    label_values: int | None = None, version: str = "0.5",
                    time: TimeCalibration | None = None) -> dict[str, Any]:
    """Return the OME attributes of an image of ``levels`` resolution levels (arrays ``0``, ``1``, ...; see
    :mod:`seamfree.io.pyramid`), validated by ``ome-zarr-models``.

    ``channel_names`` go into the ``omero`` block (with a display window of 0..1 for probabilities);
    ``label_values`` makes it an image-label (a label layer in napari) with colours for values ``0..n-1`` (0:
    instance labels, no colour table).
    ``version`` "0.5" gives the content of the ``ome`` attribute of a zarr v3 group, "0.4" the top-level
    attributes of a zarr v2 group. ``time`` (a time series): a ``t`` axis first, with the frame interval as
    its scale.
    """
    require("ome_zarr_models", "zarr")
    if version not in NGFF_VERSIONS:
        raise ConfigError(f"OME-NGFF version must be one of {', '.join(NGFF_VERSIONS)}, got {version!r}")
    if version == "0.4":
        from ome_zarr_models.v04.coordinate_transformations import VectorScale, VectorTranslation
        from ome_zarr_models.v04.image import Axis, Dataset, ImageAttrs, Multiscale
    else:
        from ome_zarr_models.v05.coordinate_transformations import (
            VectorScale,
            VectorTranslation,
        )
        from ome_zarr_models.v05.image import Axis, Dataset, ImageAttrs, Multiscale  # type: ignore[assignment]

    from seamfree.io.pyramid import level_transforms

    calibration = calibration or Calibration()
    units = calibration.units or (None,) * spatial_dims
    axes = [Axis(name="c", type="channel")] + [Axis(name=n, type="space", unit=u)
                                                 for n, u in zip("zyx"[-spatial_dims:], units)]
    scale0 = [1.0, *(calibration.scale or (1.0,) * spatial_dims)]
    translation0 = [0.0, *(calibration.translation or (0.0,) * spatial_dims)]
    if time is not None:
        axes.insert(0, Axis(name="t", type="time", unit=time.unit))
        scale0.insert(0, float(time.interval))
        translation0.insert(0, 0.0)
    lead = 2 if time is not None else 1
    datasets = []
    for level in range(levels):
        scale, translation = level_transforms(scale0, translation0, level, downsampling,  # type: ignore[arg-type]
                                              lead)
        transforms: tuple[Any, ...] = (VectorScale(type="scale", scale=scale),)
        if any(translation):
            transforms += (VectorTranslation(type="translation", translation=translation),)
        datasets.append(Dataset(path=str(level), coordinateTransformations=transforms))
    extra = {"version": "0.4"} if version == "0.4" else {}
    multiscale = Multiscale(axes=axes, datasets=tuple(datasets), name=name, **extra)  # type: ignore[arg-type]
    if version == "0.4":
        attrs = ImageAttrs(multiscales=[multiscale]).model_dump(mode="json", exclude_none=True, by_alias=True)
    else:
        attrs = ImageAttrs(version="0.5", multiscales=[multiscale]).model_dump(  # type: ignore[call-arg]
            mode="json", exclude_none=True, by_alias=True)
    if channel_names:
        attrs["omero"] = _omero(channel_names)
    if label_values is not None:
        attrs["image-label"] = _image_label(label_values, version)
    return attrs


def _omero(channel_names: Sequence[str]) -> dict[str, Any]:
    from ome_zarr_models.common.omero import Omero

    channels = [{"label": str(label), "color": _CHANNEL_COLOURS[i % len(_CHANNEL_COLOURS)], "active": True,
                 "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}}
                for i, label in enumerate(channel_names)]
    return Omero(channels=channels).model_dump(mode="json", exclude_none=True, by_alias=True)  # type: ignore[arg-type]


def _image_label(values: int, version: str) -> dict[str, Any]:
    from ome_zarr_models.common.image_label_types import LabelBase

    if values == 0:  # instance labels: as many values as objects, coloured by the viewer
        return LabelBase(version=version).model_dump(mode="json", exclude_none=True, by_alias=True)
    colours = [{"label-value": v, "rgba": _LABEL_COLOURS[v % len(_LABEL_COLOURS)] if v else (0, 0, 0, 0)}
               for v in range(max(values, 2))]
    label = LabelBase(colors=colours, version=version)  # type: ignore[arg-type]
    return label.model_dump(mode="json", exclude_none=True, by_alias=True)


def labels_group_attrs(names: Sequence[str], version: str = "0.5") -> dict[str, Any]:
    """The attributes of an image's ``labels`` group listing the label images ``names``."""
    if version == "0.4":
        from ome_zarr_models.v04.labels import LabelsAttrs as LabelsAttrs04

        return LabelsAttrs04(labels=list(names)).model_dump(mode="json", exclude_none=True, by_alias=True)
    from ome_zarr_models.v05.labels import LabelsAttrs

    return {"ome": LabelsAttrs(version="0.5", labels=list(names)).model_dump(
        mode="json", exclude_none=True, by_alias=True)}


# OME-XML's unit symbols for the NGFF unit names
_OME_XML_UNITS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
                  "picometer": "pm", "angstrom": "Å", "second": "s", "millisecond": "ms", "minute": "min",
                  "hour": "h"}


def ome_tiff_metadata(spatial_dims: int, channels: int, calibration: Calibration | None = None, *,
                      planes: int = 1, channel_names: Sequence[str] | None = None,
                      name: str = "seamfree prediction", frames: int | None = None,
                      time: TimeCalibration | None = None) -> dict[str, Any]:
    """The ``metadata`` tifffile turns into the OME-XML of an OME-TIFF output: axes, physical sizes with their
    units, the origin as every plane's position (``Plane PositionX/Y/Z``: the first plane's is the origin, each
    plane's Z its own), channel names. ``planes`` is the number of Z planes of a 3D output; ``frames`` the number
    of time points of a time series (axes ``TC...``, with ``time``'s interval)."""
    axes = "ZYX"[-spatial_dims:]
    metadata: dict[str, Any] = {"axes": ("T" if frames else "") + "C" + axes, "Name": name}
    if frames and time is not None:
        metadata["TimeIncrement"] = float(time.interval)
        if time.unit is not None:
            metadata["TimeIncrementUnit"] = _OME_XML_UNITS.get(time.unit, time.unit)
    calibration = calibration or Calibration()
    units = calibration.units or (None,) * spatial_dims
    if calibration.scale is not None:
        for axis, size, unit in zip(axes, calibration.scale, units):
            metadata[f"PhysicalSize{axis}"] = float(size)
            if unit is not None:
                metadata[f"PhysicalSize{axis}Unit"] = _OME_XML_UNITS.get(unit, unit)
    if calibration.translation is not None and any(calibration.translation):
        depth = planes if spatial_dims == 3 else 1
        scale = calibration.scale or (1.0,) * spatial_dims
        plane: dict[str, list[Any]] = {}
        for i, (axis, origin, unit) in enumerate(zip(axes, calibration.translation, units)):
            step = float(scale[i]) if axis == "Z" else 0.0  # planes are stored channel by channel, Z inside
            count = (frames or 1) * channels * depth
            plane[f"Position{axis}"] = [float(origin) + step * (p % depth) for p in range(count)]
            if unit is not None:
                plane[f"Position{axis}Unit"] = [_OME_XML_UNITS.get(unit, unit)] * count
        metadata["Plane"] = plane
    if channel_names:
        metadata["Channel"] = {"Name": [str(n) for n in channel_names]}
    elif channels:
        metadata["Channel"] = {"Name": [f"channel {i}" for i in range(channels)]}
    return metadata


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


@dataclass(frozen=True)
class TimeCalibration:
    """The interval between frames and its unit, as far as the file says."""

    interval: float = 1.0
    unit: str | None = None


def time_calibration(image: dict[str, Any], level: dict[str, Any]) -> TimeCalibration:
    """The interval between frames and its unit of an OME-NGFF image with a ``t`` axis (1, no unit if unsaid)."""
    axes = [a if isinstance(a, dict) else {"name": a} for a in image.get("axes", [])]
    names = [str(a.get("name")) for a in axes]
    if "t" not in names:
        return TimeCalibration()
    index, interval = names.index("t"), 1.0
    for transforms in (level.get("coordinateTransformations", []), image.get("coordinateTransformations", [])):
        for transform in transforms:
            if transform.get("type") == "scale" and len(transform.get("scale", [])) == len(axes):
                interval *= float(transform["scale"][index])
    return TimeCalibration(interval, axes[index].get("unit"))
