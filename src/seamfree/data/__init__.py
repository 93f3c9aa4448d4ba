"""Data: synthetic large images with known masks, training pairs from files and public datasets."""

from seamfree.data.config import DataConfig
from seamfree.data.sources import load_pairs
from seamfree.data.synthetic import SyntheticSpec, synthetic_image

__all__ = ["DataConfig", "SyntheticSpec", "load_pairs", "synthetic_image"]
