"""Blockwise instance segmentation equals the whole-image result: connected components exactly (hypothesis over
random images, block shapes and connectivities), watershed and distance watershed whenever the halo holds the
objects, with the voxels it cannot prove counted when it does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segment_helpers import nuclei, same_objects, write_prediction

from seamfree.cli.main import main
from seamfree.segment import SegmentConfig
from seamfree.segment import segment as _segment
from seamfree.segment.methods import ranked

ndimage = pytest.importorskip("scipy.ndimage")
skimage_segmentation = pytest.importorskip("skimage.segmentation")
zarr = pytest.importorskip("zarr")


def segment(prediction, output=None, *, run=None, **options):
    """``seamfree.segment`` with the configuration's fields as keywords (shorter tests)."""
    return _segment(prediction, output, config=SegmentConfig(**options), run=run)


def test_same_objects_is_a_bijection_test():
    a = np.array([[1, 1, 0], [2, 2, 0]])
    assert same_objects(a, a * 5) and same_objects(a, 3 - a * (a > 0) + (a == 0) * 0 - (a == 0) * 3)
    assert not same_objects(a, np.array([[1, 1, 0], [1, 1, 0]]))  # merged
    assert not same_objects(a, np.array([[1, 2, 0], [3, 3, 0]]))  # split
    assert not same_objects(a, np.array([[1, 1, 1], [2, 2, 0]]))  # more foreground


def _whole(mask, connectivity):
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))


@pytest.mark.integration
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_blockwise_components_equal_whole_image_labelling(data):
    dims = data.draw(st.sampled_from([2, 3]), label="dims")
    shape = tuple(data.draw(st.integers(3, 36 if dims == 2 else 12), label=f"extent{a}") for a in range(dims))
    block = tuple(data.draw(st.integers(1, s), label=f"block{a}") for a, s in enumerate(shape))
    connectivity = data.draw(st.integers(1, dims), label="connectivity")
    density = data.draw(st.floats(0.2, 0.8), label="density")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    mask = np.random.default_rng(seed).random(shape) < density
    reference, count = _whole(mask, connectivity)
    result = segment(mask.astype(np.float32), block=block, connectivity=connectivity, spatial_dims=dims)
    assert result.objects == count and result.exact
    assert same_objects(result.labels, reference)
    assert set(np.unique(result.labels)) == set(range(count + 1))  # consecutive ids


def _spiral(size):
    grid = np.zeros((size, size), bool)
    y, x, dy, dx, length = size // 2, size // 2, 0, 1, 1
    while 0 <= y < size and 0 <= x < size:
        for _ in range(2):
            for _ in range(length):
                if 0 <= y < size and 0 <= x < size:
                    grid[y, x] = True
                y, x = y + dy, x + dx
            dy, dx = dx, -dy
        length += 2
    return grid


def test_objects_spanning_many_blocks_and_touching_only_at_corners():
    spiral = _spiral(61)
    result = segment(spiral.astype(np.float32), block=4)  # the spiral crosses hundreds of block faces
    assert result.objects == _whole(spiral, 1)[1] and same_objects(result.labels, _whole(spiral, 1)[0])
    bar = np.zeros((40, 40), bool)
    bar[17:19, :] = True  # a full-width bar through every column of blocks
    assert segment(bar.astype(np.float32), block=(5, 3)).objects == 1
    corners = np.zeros((8, 8, 8), bool)
    corners[3, 3, 3] = corners[4, 4, 4] = True  # touching only at a corner, which is also a block corner
    for connectivity, objects in ((1, 2), (2, 2), (3, 1)):
        result = segment(corners.astype(np.float32), block=4, connectivity=connectivity, spatial_dims=3)
        assert result.objects == objects and same_objects(result.labels, _whole(corners, connectivity)[0])


def test_min_size_removes_small_objects_across_blocks():
    mask = np.zeros((30, 30), bool)
    mask[2:4, 2:4] = True  # 4 voxels
    mask[10:20, 9:11] = True  # 20 voxels across a block face
    result = segment(mask.astype(np.float32), block=10, min_size=5)
    assert result.objects == 1 and int(np.count_nonzero(result.labels)) == 20


def _watershed_whole(prediction, relief=None, seeds=None):
    """The whole-image seeded watershed, as ``skimage.segmentation.watershed`` computes it (ties broken by
    position, like seamfree's blocks)."""
    foreground, boundary = prediction
    mask = foreground > 0.5
    markers, _ = ndimage.label((foreground - boundary > 0.5) & mask) if seeds is None else seeds
    relief = boundary if relief is None else relief
    full = tuple(slice(0, s) for s in mask.shape)
    return skimage_segmentation.watershed(ranked(relief, full, mask.shape), markers, mask=mask,
                                          connectivity=ndimage.generate_binary_structure(mask.ndim, 1))


@pytest.mark.parametrize("dims", [2, 3])
def test_watershed_blockwise_equals_the_whole_image_when_the_halo_holds_the_objects(dims):
    shape = (160, 150) if dims == 2 else (36, 40, 44)
    prediction = nuclei(shape, 60 if dims == 2 else 25, seed=dims, radius=(4, 8) if dims == 2 else (3, 6))
    reference = _watershed_whole(prediction)
    # the relief is noisy float, so there are no ties: this is skimage's watershed exactly as users call it
    plain = skimage_segmentation.watershed(prediction[1], ndimage.label((prediction[0] - prediction[1] > 0.5)
                                                                        & (prediction[0] > 0.5))[0],
                                           mask=prediction[0] > 0.5)
    assert same_objects(plain, reference)
    block = 40 if dims == 2 else 16
    result = segment(prediction, method="watershed", block=block, max_halo=64, spatial_dims=dims)
    assert result.exact and result.halo == result.halo_needed, result
    assert same_objects(result.labels, reference)
    assert result.objects == int(reference.max())


def test_a_halo_too_small_is_measured_and_reported(caplog):
    prediction = nuclei((160, 150), 60, seed=2)
    reference = _watershed_whole(prediction)
    result = segment(prediction, method="watershed", block=40, halo=2, spatial_dims=2)
    assert not result.exact and result.unverified_voxels > 0
    # every voxel that differs from the whole-image result is among the counted ones
    relabelled = _matched(np.asarray(result.labels), reference)
    differing = int(np.count_nonzero(relabelled != reference))
    assert 0 < differing <= result.unverified_voxels, (differing, result.unverified_voxels)
    assert any("may differ from the whole-image result" in r.message for r in caplog.records)
    assert any("pass halo >=" in note for note in result.notes)


def _matched(labels, reference):
    """``labels`` with each id replaced by the reference id it overlaps most (to count differing voxels)."""
    pairs, counts = np.unique(np.stack([labels.ravel(), reference.ravel()]), axis=1, return_counts=True)
    best = {}
    for (ours, theirs), count in zip(pairs.T.tolist(), counts):
        if ours and count > best.get(ours, (0, 0))[1]:
            best[ours] = (theirs, count)
    table = np.zeros(int(labels.max()) + 1, np.int64)
    for ours, (theirs, _) in best.items():
        table[ours] = theirs
    return table[labels]


def test_distance_watershed_blockwise_equals_the_whole_image():
    foreground = nuclei((150, 160), 50, seed=5)[0]
    mask = foreground > 0.5
    distance = ndimage.distance_transform_edt(mask).astype(np.float32)
    peaks = (distance == ndimage.maximum_filter(distance, size=7, mode="constant")) & (distance >= 1) & mask
    seeds, _ = ndimage.label(peaks)
    reference = _watershed_whole(np.stack([foreground, foreground]), relief=-distance, seeds=(seeds, None))
    result = segment(foreground, method="distance", block=40, max_halo=64)
    assert result.exact and same_objects(result.labels, reference)


def test_predict_then_segment_writes_valid_labels_next_to_the_prediction(tmp_path, capsys):
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    prediction = nuclei((200, 180), 40, seed=3)
    path = tmp_path / "pred.zarr"
    write_prediction(path, prediction, scale=(0.5, 0.25))
    assert main(["segment", str(path), "--method", "watershed", "--block", "64", "-q"]) == 0
    assert "exact" in capsys.readouterr().out
    group = zarr.open_group(str(path), mode="r")
    Image.from_zarr(group)  # the prediction is still a valid image, now with labels
    label_image = ImageLabel.from_zarr(group["labels/watershed"])
    scale = label_image.attributes.ome.multiscales[0].datasets[0].coordinateTransformations[0].scale
    assert list(scale) == [1.0, 0.5, 0.25]  # it overlays the prediction
    assert "watershed" in group["labels"].attrs["ome"]["labels"]
    assert same_objects(group["labels/watershed/0"][0], _watershed_whole(prediction))
    assert np.asarray(group["labels/watershed/0"]).dtype == np.uint32
    # a second method beside the first; a rerun of a complete one does nothing and says so
    assert main(["segment", str(path), "--method", "components", "--foreground-channel", "0", "-q"]) == 0
    assert set(zarr.open_group(str(path), mode="r")["labels"].attrs["ome"]["labels"]) == {"watershed", "components"}
    assert main(["segment", str(path), "--method", "watershed", "--block", "64", "-q"]) == 0
    out = tmp_path / "standalone.zarr"
    assert main(["segment", str(path), str(out), "--method", "components", "--foreground-channel", "0", "-q"]) == 0
    ImageLabel.from_zarr(zarr.open_group(str(out), mode="r"))
    assert not list(tmp_path.glob("*.seamfree*"))  # no markers, locks or scratch left


def test_an_interrupted_segmentation_resumes_to_the_same_labels(tmp_path, monkeypatch):
    from seamfree.segment import driver

    prediction = nuclei((160, 150), 60, seed=7)
    path = tmp_path / "pred.zarr"
    write_prediction(path, prediction, scale=(1.0, 1.0))
    reference = np.asarray(segment(str(path), tmp_path / "reference.zarr", method="watershed", block=32).labels)
    calls = {"n": 0}
    original = driver.flood_task

    def dies_after_a_few(jobs, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(jobs, **kwargs)

    monkeypatch.setattr(driver, "flood_task", dies_after_a_few)
    with pytest.raises(KeyboardInterrupt):
        segment(str(path), tmp_path / "resumed.zarr", method="watershed", block=32)
    marks = zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r").attrs["seamfree"]
    assert marks["status"] == "incomplete"
    monkeypatch.setattr(driver, "flood_task", original)
    result = segment(str(path), tmp_path / "resumed.zarr", method="watershed", block=32)
    assert np.array_equal(np.asarray(result.labels), reference)


def test_a_kill_while_the_scratch_labels_are_created_resumes(tmp_path, monkeypatch):
    """Found by the kill -9 test: a run killed after making the scratch array's folder, before its metadata."""
    prediction = nuclei((64, 64), 6, seed=4)
    path = tmp_path / "pred.zarr"
    write_prediction(path, prediction, scale=(1.0, 1.0))
    reference = np.asarray(segment(str(path), tmp_path / "reference.zarr", method="watershed", block=32).labels)
    real = zarr.create_array

    def dies_half_way(store, **kwargs):
        Path(store).mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr, "create_array", dies_half_way)  # the module seamfree.segment imports
    with pytest.raises(KeyboardInterrupt):
        segment(str(path), tmp_path / "labels.zarr", method="watershed", block=32)
    monkeypatch.setattr(zarr, "create_array", real)
    result = segment(str(path), tmp_path / "labels.zarr", method="watershed", block=32)
    assert np.array_equal(np.asarray(result.labels), reference)


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--method", "components"], "has 2; choose it with foreground_channel"),
    (["--method", "watershed", "--boundary-channel", "5"], "boundary_channel .* 5 does not exist"),
    (["--threshold", "1.5", "--foreground-channel", "0"], r"threshold .* must lie in \[0, 1\], got 1.5"),
    (["--seed-threshold", "-1", "--method", "watershed"], r"seed_threshold .* \[0, 1\]"),
    (["--connectivity", "3", "--foreground-channel", "0"], "connectivity must be between 1 and 2"),
])
def test_bad_segmentation_options_are_one_line_and_exit_2(tmp_path, capsys, argv, pattern):
    import re

    path = tmp_path / "pred.zarr"
    write_prediction(path, nuclei((64, 64), 5, seed=0), scale=(1.0, 1.0))
    assert main(["segment", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(pattern, err[0]), err


def test_an_output_with_another_fingerprint_is_refused(tmp_path, capsys):
    path = tmp_path / "pred.zarr"
    write_prediction(path, nuclei((64, 64), 5, seed=0), scale=(1.0, 1.0))
    out = tmp_path / "labels.zarr"
    assert main(["segment", str(path), str(out), "--foreground-channel", "0", "-q"]) == 0
    before = json.dumps(dict(zarr.open_group(str(out), mode="r").attrs), sort_keys=True)
    assert main(["segment", str(path), str(out), "--foreground-channel", "0", "--threshold", "0.7", "-q"]) == 2
    err = capsys.readouterr().err
    assert "different" in err and "threshold" in err and len(err.strip().splitlines()) == 1
    assert json.dumps(dict(zarr.open_group(str(out), mode="r").attrs), sort_keys=True) == before
    assert main(["segment", str(path), str(out), "--foreground-channel", "0", "--threshold", "0.7", "-q",
                 "--overwrite"]) == 0
    (tmp_path / "user.zarr").mkdir()
    (tmp_path / "user.zarr" / "data.txt").write_text("the user's")
    assert main(["segment", str(path), str(tmp_path / "user.zarr"), "--foreground-channel", "0", "--overwrite"]) == 2
    assert (tmp_path / "user.zarr" / "data.txt").read_text() == "the user's"


def test_predict_with_segment_labels_the_prediction_next_to_it(tmp_path, capsys):
    import torch

    from seamfree.models import UNet, save_model
    from seamfree.testing import randomize_norm_statistics

    torch.manual_seed(0)
    save_model(randomize_norm_statistics(UNet(2, 1, 1, depth=1, features=2, norm="batchrenorm")).eval(),
               tmp_path / "m.pt")
    np.save(tmp_path / "image.npy", np.random.default_rng(0).normal(size=(96, 80)).astype(np.float32))
    out = tmp_path / "pred.zarr"
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "image.npy"), str(out), "-q", "--segment",
                 "components", "--threshold", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "objects (components" in printed
    group = zarr.open_group(str(out), mode="r")
    probabilities = np.asarray(group["0"])[0]
    assert same_objects(group["labels/components/0"][0], ndimage.label(probabilities > 0.5)[0])
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "image.npy"), str(tmp_path / "p.tif"), "-q",
                 "--segment", "components"]) == 2  # labels go next to an OME-Zarr prediction only
    assert "pass a .zarr output" in capsys.readouterr().err and not (tmp_path / "p.tif").exists()
