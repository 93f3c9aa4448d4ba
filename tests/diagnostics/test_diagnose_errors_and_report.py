"""diagnose: bad input, the JSON/HTML report, the CLI, and the report as a browser renders it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from seamfree.cli.main import main
from seamfree.diagnostics import DiagnoseConfig, diagnose
from seamfree.diagnostics.report import check_rendering, find_chromium, write_report
from seamfree.errors import ShapeError
from seamfree.models import UNet, save_model
from seamfree.testing import randomize_norm_statistics

FAST = DiagnoseConfig(core=48, patch_size=32, batch_size=2, ted_batches=2)


class Shrinking(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)  # no padding: the output is smaller than the input

    def forward(self, x):
        return self.conv(x)


def test_output_shape_differing_from_input_is_a_clear_error(rng):
    with pytest.raises(ShapeError, match=r"output spatial shape .* differs from its input"):
        diagnose(Shrinking(), rng.random((96, 96)), config=FAST)


def test_image_too_small_for_two_overlapping_tiles(rng):
    net = UNet(2, 1, 1, depth=2, features=4, norm="instance")
    with pytest.raises(ShapeError, match=r"at least two overlapping tiles.*pass a smaller core"):
        diagnose(net, rng.random((40, 40)), config=DiagnoseConfig(core=64, patch_size=32))


def test_ground_truth_of_another_shape_is_an_error(rng):
    net = UNet(2, 1, 1, depth=2, features=4, norm="batch")
    with pytest.raises(ShapeError, match="ground truth has spatial shape"):
        diagnose(net, rng.random((96, 96)), ground_truth=np.zeros((90, 96)), config=FAST)


@pytest.fixture(scope="module")
def two_diagnoses():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, size=(160, 160)).astype(np.float32)
    image[:70, :70] += 3
    truth = (image > 1).astype(np.uint8)
    out = []
    for norm in ("instance", "batchrenorm"):
        torch.manual_seed(0)
        net = randomize_norm_statistics(UNet(2, 1, 1, depth=2, features=4, norm=norm)).eval()
        out.append(diagnose(net, image, ground_truth=truth, config=FAST, name=f"{norm} net"))
    return out


def test_report_json_follows_the_documented_schema(two_diagnoses, tmp_path):
    page = write_report(two_diagnoses, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == 3 and len(data["diagnoses"]) == 2
    first = data["diagnoses"][0]
    for key in ("audit", "receptive_field", "geometry", "tile_mismatch", "train_eval_disparity", "seams",
                "exactness", "recommendation", "suggested_tiling", "dice", "seconds"):
        assert key in first, key
    assert first["tile_mismatch"]["tm_dice"] > 0 and data["diagnoses"][1]["tile_mismatch"]["tm_abs"] == 0
    assert first["dice"] is not None and first["train_eval_disparity"]["delta_dice"] is not None
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 19  # 3 crops and 6 overviews per model, the indicator bars
    assert "instance TM" in html and first["instances"]["differing_a"] + first["instances"]["differing_b"] > 0
    assert "instance net" in html and "batchrenorm net" in html and "InstanceNorm2d" in html
    assert "How to read this" in html and "Tile mismatch (TM)" in html and "docs/diagnose.md" in html
    assert "Dice of the tiled prediction against the ground truth" in html
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"instance-net_crop_difference.png", "batchrenorm-net_grid.png", "indicators.png", "crops.png",
            "instance-net_instances.png"} <= names


def test_report_crops_show_the_disagreement_of_the_tile_dependent_model_only(two_diagnoses, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    write_report(two_diagnoses, tmp_path)
    crop = {name: plt.imread(str(tmp_path / "figures" / f"{name}_crop_difference.png"))[6:-6, 6:-6, :3]
            for name in ("instance-net", "batchrenorm-net")}
    assert crop["instance-net"].shape == crop["batchrenorm-net"].shape  # the same window, the same zoom
    assert crop["instance-net"].shape[0] >= 160  # enlarged to be seen without zooming
    assert crop["instance-net"].max() > 0.3  # |A − B| of InstanceNorm: bright somewhere
    assert crop["batchrenorm-net"].max() < 0.05  # exact: black everywhere on the shared scale
    predictions = [plt.imread(str(tmp_path / "figures" / f"{n}_crop_prediction.png")) for n in crop]
    assert all(p[6:-6, 6:-6].std() > 0 for p in predictions)  # not blank


def test_report_renders_in_headless_chromium(two_diagnoses, tmp_path):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    page = write_report(two_diagnoses, tmp_path)
    seen = check_rendering(page, tmp_path / "shot.png")
    assert seen.figures_loaded and seen.figure_count == 19
    assert seen.nonblank_fraction > 0.05  # a blank or broken page is (almost) all white


def test_report_on_a_real_em_frame_has_nonblank_crops_and_legible_text(data_dir, tmp_path):
    """isbi2012: a real section, two models; the crops carry the image's texture, every text is 13 px or more."""
    import re

    from seamfree.data.datasets import load_dataset
    from seamfree.diagnostics import report

    plt = pytest.importorskip("matplotlib.pyplot")
    image, mask = load_dataset("isbi2012", "test", root=data_dir)[0]
    image, mask = image[..., :256, :256], mask[..., :256, :256]
    found = []
    for norm in ("instance", "batchrenorm"):
        torch.manual_seed(0)
        net = randomize_norm_statistics(UNet(2, 1, 1, depth=2, features=4, norm=norm)).eval()
        found.append(diagnose(net, image, ground_truth=mask, name=norm, config=FAST))
    page = write_report(found, tmp_path)
    for name in ("instance", "batchrenorm"):
        for key in ("input", "prediction"):
            crop = plt.imread(str(tmp_path / "figures" / f"{name}_crop_{key}.png"))[6:-6, 6:-6, :3]
            assert crop.std() > 0.02, (name, key)  # membranes and cytoplasm, not a flat square
    sizes = re.findall(r"font-size:\s*([0-9.]+)(px|em)", report._CSS)
    assert sizes and all(float(v) * (16 if unit == "em" else 1) >= 13 for v, unit in sizes), sizes
    if find_chromium() is not None:
        seen = check_rendering(page, tmp_path / "shot.png")
        assert seen.figures_loaded and seen.nonblank_fraction > 0.05


def test_cli_diagnose_writes_the_report_and_bad_checkpoint_exits_2(tmp_path, rng, capsys):
    torch.manual_seed(0)
    model = save_model(UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm"), tmp_path / "m.pt",
                       metadata={"patch_size": [32, 32], "batch_size": 2})
    np.save(tmp_path / "image.npy", rng.random((128, 128)).astype(np.float32))
    code = main(["diagnose", str(model), str(tmp_path / "image.npy"), "--out", str(tmp_path / "rep"),
                 "--core", "48", "--ted-batches", "1"])
    assert code == 0
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.html").exists() and (tmp_path / "rep" / "report.json").exists()
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    code = main(["diagnose", str(tmp_path / "broken.pt"), str(tmp_path / "image.npy"), "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.pt" in err and not (tmp_path / "x" / "report.html").exists()
    code = main(["diagnose", str(model), str(tmp_path / "image.npy"), "--out", str(tmp_path / "y"), "--core", "512"])
    assert code == 2 and "two overlapping tiles" in capsys.readouterr().err
