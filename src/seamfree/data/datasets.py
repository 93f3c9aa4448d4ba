"""Real public microscopy datasets by name: where they are published, checksums, cache, loaders, splits.

Each dataset is kept in the layout of its original public release under ``<root>/<name>/`` where ``root`` is
``$SEAMFREE_DATA`` (default ``~/.cache/seamfree``). ``fetch`` downloads every file of the checksum manifest
(``seamfree/data/manifests/<name>.sha256``) from the release's pinned commit, writing each to a ``.partial``
name, verifying its SHA-256 and only then renaming it, so an interrupted fetch resumes and never leaves a file
that looks complete but is not.

Splits are fixed and documented here (and in ``seamfree data info NAME``):

- ``drosophila-vnc`` (20 sections of 1024², anisotropic): sections 0–11 train, 12–15 val, 16–19 test; in 3D the
  same ranges as sub-stacks. Targets ``membranes`` (default) and ``mitochondria``.
- ``isbi2012`` (30 labelled 512² sections; the challenge test labels were never released): 0–19 train,
  20–24 val, 25–29 test. Target ``membranes`` (label 0 = membrane in the release).
- ``coelho2009`` subsets ``gnf`` (U2OS) and ``ic100`` (NIH3T3), images with a label map sorted by number: the
  first 60 % train, the next 20 % val, the last 20 % test. Target ``nuclei`` (foreground; instance labels with
  ``instances=True``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from seamfree.config import did_you_mean
from seamfree.errors import ConfigError, DataError, require
from seamfree.io.files import file_sha256

__all__ = [
    "DATASETS",
    "SPLIT_DOCS",
    "Dataset",
    "data_root",
    "dataset_path",
    "fetch",
    "load_dataset",
    "load_dataset_pairs",
    "verify",
]

logger = logging.getLogger(__name__)

Pair = tuple[np.ndarray, np.ndarray]
SPLITS = ("train", "val", "test")
SPLIT_DOCS = {
    "drosophila-vnc": "sections 0-11 train, 12-15 val, 16-19 test (3D: the same ranges as sub-stacks)",
    "isbi2012": "labelled sections 0-19 train, 20-24 val, 25-29 test",
    "coelho2009": "per subset, labelled images sorted by number: first 60 % train, next 20 % val, last 20 % test",
}


@dataclass(frozen=True)
class Dataset:
    """A public dataset: provenance, licence, targets, and how local paths map to the release's URLs."""

    name: str
    description: str
    source: str
    base_url: str
    licence: str
    citation: str
    targets: tuple[str, ...]
    subsets: tuple[str, ...] = ()
    remote_prefixes: tuple[tuple[str, str], ...] = ()

    def url(self, relative: str) -> str:
        """Return the download URL of a file given by its path in the local (release) layout."""
        for local, remote in self.remote_prefixes:
            if relative.startswith(local):
                return self.base_url + remote + relative[len(local):]
        return self.base_url + relative

    def manifest(self) -> dict[str, str]:
        """Return {relative path: sha256} of every file of the dataset."""
        text = (resources.files("seamfree.data") / "manifests" / f"{self.name}.sha256").read_text()
        entries = {}
        for line in text.splitlines():
            if line.strip():
                digest, path = line.split(maxsplit=1)
                entries[path.strip()] = digest
        return entries


DATASETS: dict[str, Dataset] = {
    "drosophila-vnc": Dataset(
        "drosophila-vnc",
        "serial-section TEM of the Drosophila larva ventral nerve cord: 20 × 1024 × 1024 uint8 sections "
        "(4.6 nm/px, 45–50 nm sections) with dense membrane and mitochondria masks",
        "https://github.com/unidesigner/groundtruth-drosophila-vnc (commit 4a5f051), figshare "
        "doi:10.6084/m9.figshare.856713",
        "https://raw.githubusercontent.com/unidesigner/groundtruth-drosophila-vnc/"
        "4a5f051466d24d8dc1e855ab55658bb1b1dcd6bf/",
        "CC BY-NC-SA 3.0 (non-commercial research use)",
        "Gerhard, Funke, Martel, Cardona, Fetter. Segmented anisotropic ssTEM dataset of neural tissue. "
        "figshare 2013, doi:10.6084/m9.figshare.856713",
        ("membranes", "mitochondria"),
    ),
    "isbi2012": Dataset(
        "isbi2012",
        "ISBI 2012 EM segmentation challenge: 30 labelled 512 × 512 ssTEM sections (Drosophila VNC) plus 30 "
        "unlabelled test sections; membranes",
        "https://github.com/zhixuhao/unet (commit b45af4d), folder data/membrane",
        "https://raw.githubusercontent.com/zhixuhao/unet/b45af4d458437d8281cc218a07fd4380818ece4a/data/membrane/",
        "public challenge data for research; cite the papers below",
        "Cardona et al., PLoS Biol 8:e1000502 (2010); Arganda-Carreras et al., Front. Neuroanat. 9:142 (2015)",
        ("membranes",),
    ),
    "coelho2009": Dataset(
        "coelho2009",
        "fluorescence (Hoechst) nuclei, hand-segmented instances: 50 U2OS images (gnf, 1030 × 1349) and 50 "
        "NIH3T3 images (ic100, 1024 × 1344); ic100 has bright debris: a natural domain shift",
        "https://github.com/luispedro/Coelho2009_ISBI_NuclearSegmentation (commit 9629f3a)",
        "https://raw.githubusercontent.com/luispedro/Coelho2009_ISBI_NuclearSegmentation/"
        "9629f3a8829982726327802af55ab6ae7a2b5316/",
        "released by the authors for research; cite the paper below",
        "Coelho, Shariff, Murphy. Nuclear segmentation in microscope cell images: a hand-segmented dataset and "
        "comparison of algorithms. ISBI 2009, doi:10.1109/ISBI.2009.5193098",
        ("nuclei",),
        subsets=("gnf", "ic100"),
        remote_prefixes=(("images/", "data/images/dna-images/"), ("labels/", "data/preprocessed-data/")),
    ),
}


def data_root() -> Path:
    """Return the dataset cache: ``$SEAMFREE_DATA`` or ``~/.cache/seamfree``."""
    return Path(os.environ.get("SEAMFREE_DATA") or Path.home() / ".cache" / "seamfree")


def get_dataset(name: str) -> Dataset:
    """Return the dataset called ``name``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}{did_you_mean(name, list(DATASETS))}; "
                          f"known: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_path(name: str, root: str | Path | None = None) -> Path:
    """Return the folder of dataset ``name``; DataError naming the fetch command when it is absent."""
    dataset = get_dataset(name)
    folder = Path(root) if root is not None else data_root()
    path = folder / dataset.name
    if not path.is_dir():
        raise DataError(f"dataset {name!r} not found at {path}; download it with: seamfree data fetch {name} "
                        f"(or set SEAMFREE_DATA to the folder that holds it)")
    return path


def verify(name: str, root: str | Path | None = None) -> dict[str, list[str]]:
    """Return {"missing": [...], "corrupt": [...]} files of dataset ``name`` (both empty: all verified)."""
    dataset = get_dataset(name)
    folder = (Path(root) if root is not None else data_root()) / dataset.name
    report: dict[str, list[str]] = {"missing": [], "corrupt": []}
    for relative, digest in dataset.manifest().items():
        path = folder / relative
        if not path.exists():
            report["missing"].append(relative)
        elif file_sha256(path) != digest:
            report["corrupt"].append(relative)
    return report


def _download(url: str, destination: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:
        shutil.copyfileobj(response, out)


def fetch(name: str, root: str | Path | None = None, *, progress: Callable[[int, int], None] | None = None,
          download: Callable[[str, Path], None] = _download) -> Path:
    """Download dataset ``name`` into ``root`` (default :func:`data_root`), verify every checksum; return its path.

    Files already present with the right checksum are kept, so a rerun resumes an interrupted fetch.
    """
    dataset = get_dataset(name)
    folder = (Path(root) if root is not None else data_root()) / dataset.name
    manifest = dataset.manifest()
    for done, (relative, digest) in enumerate(sorted(manifest.items()), start=1):
        target = folder / relative
        if target.exists() and file_sha256(target) == digest:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        url = dataset.url(relative)
        try:
            download(url, partial)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise DataError(f"could not download {url}: {exc}; check the connection and rerun "
                            f"`seamfree data fetch {name}` (files already fetched are kept)") from exc
        actual = file_sha256(partial)
        if actual != digest:
            partial.unlink()
            raise DataError(f"checksum mismatch for {url}: expected sha256 {digest}, got {actual}; the release "
                            "changed or the download was corrupted; rerun, or report it")
        partial.replace(target)
        if progress:
            progress(done, len(manifest))
    logger.info("dataset %s: %d files verified in %s", name, len(manifest), folder)
    return folder


def _read(path: Path) -> np.ndarray:
    if path.suffix in (".tif", ".tiff"):
        tifffile = require("tifffile", "tiff")
        return np.asarray(tifffile.imread(path))  # type: ignore[attr-defined]
    require("imageio", "plot")
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _number(path: Path) -> int:
    found = re.findall(r"\d+", path.stem)
    return int(found[-1]) if found else -1


def _split_indices(count: int, split: str) -> range:
    train, val = round(0.6 * count), round(0.8 * count)
    return {"train": range(0, train), "val": range(train, val), "test": range(val, count)}[split]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")


def _drosophila(path: Path, split: str, target: str, spatial_dims: int) -> list[Pair]:
    sections = {"train": range(0, 12), "val": range(12, 16), "test": range(16, 20)}[split]
    images = [_read(path / "stack1" / "raw" / f"{k:02d}.tif") for k in sections]
    masks = [(_read(path / "stack1" / target / f"{k:02d}.png") > 0).astype(np.uint8) for k in sections]
    masks = [m[..., 0] if m.ndim == 3 else m for m in masks]
    if spatial_dims == 3:
        return [(np.stack(images)[np.newaxis], np.stack(masks)[np.newaxis])]
    return [(i[np.newaxis], m[np.newaxis]) for i, m in zip(images, masks)]


def _isbi(path: Path, split: str) -> list[Pair]:
    indices = {"train": range(0, 20), "val": range(20, 25), "test": range(25, 30)}[split]
    pairs = []
    for k in indices:
        image = _read(path / "train" / "image" / f"{k}.png")
        label = _read(path / "train" / "label" / f"{k}.png")
        pairs.append((image[np.newaxis], (label == 0).astype(np.uint8)[np.newaxis]))  # 0 (black) = membrane
    return pairs


def _coelho(path: Path, split: str, subset: str, instances: bool) -> list[Pair]:
    labels = sorted((path / "labels" / subset).glob("dna-*.png"), key=_number)
    pairs = []
    for k in _split_indices(len(labels), split):
        label = _read(labels[k])
        image = _read(path / "images" / subset / labels[k].name)
        image = image[..., 0] if image.ndim == 3 else image  # stored as RGB with three equal channels
        label = label[..., 0] if label.ndim == 3 else label
        mask = label.astype(np.int32) if instances else (label > 0).astype(np.uint8)
        pairs.append((image[np.newaxis], mask[np.newaxis]))
    return pairs


def load_dataset(name: str, split: str = "train", *, target: str | None = None, subset: str | None = None,
                 spatial_dims: int = 2, instances: bool = False, root: str | Path | None = None) -> list[Pair]:
    """Return the ``(image (1, *spatial), mask (1, *spatial))`` pairs of one split of a dataset.

    Images keep their stored dtype (uint8); masks are uint8 (1 = target), or int32 instance labels for
    coelho2009 with ``instances=True``. ``spatial_dims=3`` is available for drosophila-vnc (one sub-stack).
    """
    _check_split(split)
    dataset = get_dataset(name)
    path = dataset_path(name, root)
    target = target or dataset.targets[0]
    if target not in dataset.targets:
        raise ConfigError(f"dataset {name!r} has targets {dataset.targets}, got {target!r}")
    if spatial_dims == 3 and name != "drosophila-vnc":
        raise ConfigError(f"dataset {name!r} is 2D; only drosophila-vnc has a 3D stack")
    if name == "drosophila-vnc":
        return _drosophila(path, split, target, spatial_dims)
    if name == "isbi2012":
        return _isbi(path, split)
    subset = subset or dataset.subsets[0]
    if subset not in dataset.subsets:
        raise ConfigError(f"dataset {name!r} has subsets {dataset.subsets}, got {subset!r}")
    return _coelho(path, split, subset, instances)


def load_dataset_pairs(name: str, *, target: str | None, subset: str | None,
                       spatial_dims: int) -> tuple[list[Pair], list[Pair]]:
    """Return (train, val) pairs of a dataset, for training."""
    return (load_dataset(name, "train", target=target, subset=subset, spatial_dims=spatial_dims),
            load_dataset(name, "val", target=target, subset=subset, spatial_dims=spatial_dims))
