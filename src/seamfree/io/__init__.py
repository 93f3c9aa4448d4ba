"""Readers and writers: numpy, zarr v3 / OME-Zarr, TIFF, HDF5; done markers for resumable outputs."""

from seamfree.io.readers import ImageSource, open_image, parse_axes
from seamfree.io.writers import ArrayOutput, OutputTarget, TiffOutput, ZarrOutput, create_output, output_format

__all__ = [
    "ArrayOutput",
    "ImageSource",
    "OutputTarget",
    "TiffOutput",
    "ZarrOutput",
    "create_output",
    "open_image",
    "output_format",
    "parse_axes",
]
