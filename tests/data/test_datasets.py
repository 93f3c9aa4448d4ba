"""Named datasets (on the local copies in SEAMFREE_DATA) and synthetic images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from seamfree.cli.main import main
from seamfree.data import SyntheticSpec, synthetic_image
from seamfree.data.datasets import DATASETS, fetch, load_dataset, verify
from seamfree.errors import ConfigError, DataError
from seamfree.training import load_config, train


@pytest.mark.parametrize("name", list(DATASETS))
def test_local_copies_match_the_checksum_manifest(name, data_dir):
    assert verify(name, data_dir) == {"missing": [], "corrupt": []}


def test_splits_are_fixed_disjoint_and_masks_binary(data_dir):
    sizes = {split: len(load_dataset("isbi2012", split, root=data_dir)) for split in ("train", "val", "test")}
    assert sizes == {"train": 20, "val": 5, "test": 5}
    image, mask = load_dataset("isbi2012", "test", root=data_dir)[0]
    assert image.shape == mask.shape == (1, 512, 512) and set(np.unique(mask)) == {0, 1}
    assert 0.1 < mask.mean() < 0.35  # membranes (label 0 in the release) are the minority
    stack = load_dataset("drosophila-vnc", "val", target="mitochondria", spatial_dims=3, root=data_dir)
    assert stack[0][0].shape == (1, 4, 1024, 1024) and 0.01 < stack[0][1].mean() < 0.15
    nuclei = load_dataset("coelho2009", "train", subset="ic100", instances=True, root=data_dir)
    assert nuclei[0][0].ndim == 3 and nuclei[0][1].max() > 10  # instance labels


def test_missing_data_names_the_fetch_command(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="seamfree data fetch isbi2012"):
        load_dataset("isbi2012", root=tmp_path)
    config = load_config(base={"data": {"source": "isbi2012"}, "output": str(tmp_path / "run")})
    monkeypatch.setenv("SEAMFREE_DATA", str(tmp_path))
    with pytest.raises(DataError, match="seamfree data fetch isbi2012"):
        train(config)  # before any training step
    assert not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(ConfigError, match="did you mean 'isbi2012'"):
        load_dataset("isbi2013", root=tmp_path)


def test_fetch_verifies_checksums_and_resumes(tmp_path, data_dir):
    dataset = DATASETS["isbi2012"]
    urls = []

    def from_local_copy(url, destination):  # stands in for the network: serve the release from the local copy
        urls.append(url)
        relative = url[len(dataset.base_url):]
        shutil.copyfile(data_dir / "isbi2012" / relative, destination)

    fetch("isbi2012", tmp_path, download=from_local_copy)
    assert verify("isbi2012", tmp_path) == {"missing": [], "corrupt": []}
    assert urls[0].startswith("https://raw.githubusercontent.com/zhixuhao/unet/")
    (tmp_path / "isbi2012" / "train" / "image" / "3.png").write_bytes(b"truncated")
    urls.clear()
    fetch("isbi2012", tmp_path, download=from_local_copy)  # only the damaged file is fetched again
    assert len(urls) == 1 and verify("isbi2012", tmp_path)["corrupt"] == []

    def corrupting(url, destination):
        destination.write_bytes(b"not the file")

    (tmp_path / "isbi2012" / "train" / "image" / "4.png").unlink()
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch("isbi2012", tmp_path, download=corrupting)
    assert not list((tmp_path / "isbi2012").rglob("*.partial"))
    assert not (tmp_path / "isbi2012" / "train" / "image" / "4.png").exists()


def test_cli_data_list_and_info(capsys, data_dir, monkeypatch):
    monkeypatch.setenv("SEAMFREE_DATA", str(data_dir))
    assert main(["data", "list"]) == 0
    assert "coelho2009" in capsys.readouterr().out
    assert main(["data", "info", "drosophila-vnc"]) == 0
    out = capsys.readouterr().out
    assert "CC BY-NC-SA" in out and "complete" in out and "12-15 val" in out


@pytest.mark.parametrize("kind", ["nuclei", "membranes"])
def test_synthetic_images_are_deterministic_with_known_masks(kind):
    spec = SyntheticSpec(kind, object_size=6 if kind == "nuclei" else 20, gradient=0.5, empty_fraction=0.2,
                         debris=3, region_shift=0.3)
    a, mask_a = synthetic_image((96, 80), spec, seed=3)
    b, mask_b = synthetic_image((96, 80), spec, seed=3)
    c, _ = synthetic_image((96, 80), spec, seed=4)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and set(np.unique(mask_a)) <= {0, 1} and 0.02 < mask_a.mean() < 0.6
    volume, mask3 = synthetic_image((24, 40, 40), spec, seed=0)
    assert volume.shape == mask3.shape == (24, 40, 40)
    with pytest.raises(ConfigError, match="nuclei"):
        SyntheticSpec("cells")
