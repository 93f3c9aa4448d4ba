"""Where training data comes from: :class:`DataConfig` (synthetic images, files, or a named public dataset)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    Attributes
    ----------
    source : str
        "synthetic", "files", or a dataset name (``seamfree data list``).
    target : str, optional
        What to segment for datasets with several targets (e.g. drosophila-vnc: membranes, mitochondria).
    subset : str, optional
        Dataset subset (coelho2009: gnf, ic100).
    synthetic_kind : {"nuclei", "membranes"}
    synthetic_shape : tuple of int
        Spatial shape of each synthetic image.
    synthetic_train, synthetic_val : int
        Number of synthetic training and validation images.
    synthetic_options : dict
        Further :class:`seamfree.data.synthetic.SyntheticSpec` fields.
    images, masks, val_images, val_masks : tuple of str
        Files for ``source: files``.
    limit : int, optional
        Use at most this many training images (small-data experiments, fine-tuning).
    subset_seed : int, optional
        Shuffle the training images with this seed before ``limit``: a different random subset of ``limit``
        images per seed, nested as ``limit`` grows (the images a transfer experiment fine-tunes on).
    seed : int
        Seed of synthetic images.
    """

    source: str = "synthetic"
    target: str | None = None
    subset: str | None = None
    synthetic_kind: Literal["nuclei", "membranes"] = "nuclei"
    synthetic_shape: tuple[int, ...] = (256, 256)
    synthetic_train: int = 4
    synthetic_val: int = 1
    synthetic_options: dict[str, Any] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()
    val_images: tuple[str, ...] = ()
    val_masks: tuple[str, ...] = ()
    limit: int | None = None
    subset_seed: int | None = None
    seed: int = 0


