"""Write example inputs for the README's main command: a 2D image (a plain zarr v3 array) and a model.

Usage::

    python examples/make_inputs.py FOLDER

The image is synthetic (bright blobs on a background gradient, 1536 × 2048, uint8, chunked zarr); the model is
an *untrained* BatchRenorm U-Net saved as a seamfree checkpoint. Its predictions carry no meaning yet (training
is `seamfree train`, in progress); the point is the pipeline: audit, automatic receptive field and halo,
tiled prediction written as OME-Zarr, resumable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import zarr

import seamfree as sf


def synthetic_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Return blobs on a smooth background gradient, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    image = 30 + 40 * xx / shape[1]
    for _ in range(400):
        cy, cx, radius = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(6, 18)
        window = (slice(max(0, int(cy - 2 * radius)), int(cy + 2 * radius)),
                  slice(max(0, int(cx - 2 * radius)), int(cx + 2 * radius)))
        image[window] += 120 * np.exp(-((yy[window] - cy) ** 2 + (xx[window] - cx) ** 2) / (2 * radius**2))
    return np.clip(image + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = synthetic_image((1536, 2048))
    array = zarr.create_array(str(folder / "image.zarr"), shape=image.shape, chunks=(512, 512), dtype="u1",
                              overwrite=True)
    array[:] = image
    torch.manual_seed(0)
    model = sf.UNet(2, 1, 1, depth=4, features=16, norm="batchrenorm")
    sf.save_model(model, folder / "model.pt", metadata={"note": "untrained example model"})
    print(f"wrote {folder / 'image.zarr'} {image.shape} and {folder / 'model.pt'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example"))
