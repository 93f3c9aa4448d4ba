"""Reading seamfree's outputs back in tests: a complete OME-Zarr (its level 0) or a TIFF, as a numpy array."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_output"]


def read_output(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the stored prediction at ``path``; AssertionError unless an OME-Zarr output says it is complete."""
    path = Path(path)
    if path.suffix == ".zarr":
        import zarr

        group: Any = zarr.open_group(str(path), mode="r")
        assert dict(group.attrs)["seamfree"]["status"] == "complete", f"{path} is not complete"
        return np.asarray(group["0"][...])
    import tifffile

    with tifffile.TiffFile(str(path)) as tiff:
        data = np.asarray(tiff.asarray())
        if tiff.is_ome:  # an OME series squeezes a single channel: the stored layout is (C, *spatial)
            pixels = tifffile.xml2dict(tiff.ome_metadata or "")["OME"]["Image"]["Pixels"]
            if int(pixels["SizeC"]) == 1:  # (C, *spatial), or (T, C, *spatial) for a time series
                data = data[:, np.newaxis] if int(pixels.get("SizeT", 1)) > 1 else data[np.newaxis]
    return data
