"""The near-exact mode: the effective halo, its error measured against the exact halo, widened to a bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.data.synthetic import SyntheticSpec, synthetic_image
from seamfree.errors import ConfigError
from seamfree.io.writers import recorded_fingerprint
from seamfree.models import UNet, save_model
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import PredictConfig, predict
from seamfree.tiling.near_exact import SAFETY, effective_tolerance, widen


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize_norm_statistics(UNet(2, 1, 1, depth=3, features=8, norm="batch")).eval()


@pytest.fixture(scope="module")
def picture():
    image, _ = synthetic_image((384, 384), SyntheticSpec("nuclei"), seed=1)
    return np.asarray(image)


@pytest.fixture(scope="module")
def exact(net, picture):
    return predict(net, picture, config=PredictConfig(core=64))


def _near(net, picture, **options):
    found = []
    out = predict(net, picture, config=PredictConfig(core=64, halo="effective", **options), report=found)
    return out, found[0]


def test_the_effective_halo_is_far_smaller_and_its_error_is_measured_and_bounded(net, picture, exact):
    out, report = _near(net, picture)
    check = report.halo_check
    assert check.exact_halo == (48, 48) and check.halo == check.effective_halo and check.halo[0] < 48
    assert report.grid.halo == check.halo and report.grid.compute_ratio < 0.5 * (64 + 96) ** 2 / 64 ** 2
    actual = float(np.abs(out - exact).max())
    assert 0 < check.error <= SAFETY * check.max_error
    assert actual <= check.max_error, (actual, check.error)  # the whole output keeps the bound
    assert actual < 3 * check.error  # and the samples saw errors of the whole output's size, not far smaller
    assert check.samples >= 4 and check.voxels > 0 and check.flipped == 0
    assert ((out > 0.5) != (exact > 0.5)).sum() == 0
    assert report.to_dict()["near_exact"]["error"] == check.error


def test_a_tighter_bound_widens_the_halo_until_it_holds(net, picture, exact):
    _, loose = _near(net, picture)
    bound = loose.halo_check.error  # the effective halo's error is twice what SAFETY accepts under this bound
    out, report = _near(net, picture, max_error=bound)
    check = report.halo_check
    assert len(check.tried) >= 2 and check.tried[0][0] == loose.halo_check.halo
    assert check.halo > check.effective_halo and check.error <= SAFETY * bound
    assert float(np.abs(out - exact).max()) <= bound


def test_a_bound_no_halo_but_the_exact_one_meets_gives_the_exact_prediction(net, picture, exact):
    out, report = _near(net, picture, max_error=1e-12)
    check = report.halo_check
    assert check.halo == check.exact_halo and check.error == 0.0
    assert [h for h, _ in check.tried][-1] == (48, 48) and all(e > 0 for _, e in check.tried[:-1])
    np.testing.assert_array_equal(out, exact)


def test_widening_steps_by_half_on_the_stride_and_stops_at_the_exact_halo():
    assert widen((8, 8), (48, 48), (8, 8)) == (16, 16)
    assert widen((16, 16), (48, 48), (8, 8)) == (24, 24)
    assert widen((40, 8), (48, 48), (8, 8)) == (48, 16)
    assert widen((0, 0), (16, 16), (4, 4)) == (4, 4)


@pytest.mark.parametrize(("halo", "tolerance"), [("effective", 1e-3), ("effective:1e-2", 1e-2), ("auto", None),
                                                 (16, None)])
def test_the_halo_option_names_the_tolerance(halo, tolerance):
    assert effective_tolerance(halo) == tolerance


@pytest.mark.parametrize(("options", "message"), [
    ({"halo": "effective:2"}, "0 < TOL < 1"),
    ({"halo": "efective"}, "'auto', 'effective'"),
    ({"halo": "effective", "stitching": "blend"}, "stitching='crop'"),
    ({"max_error": 0.0}, "positive bound"),
])
def test_bad_near_exact_options_say_what_to_pass(options, message):
    with pytest.raises(ConfigError, match=message):
        PredictConfig(**options)


def test_the_cli_reports_the_measured_error_and_resumes_with_the_recorded_halo(net, picture, tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    model = save_model(net, tmp_path / "net.pt")
    np.save(tmp_path / "image.npy", picture)
    out = tmp_path / "near.zarr"
    argv = ["predict", str(model), str(tmp_path / "image.npy"), str(out), "--core", "64", "--halo", "effective",
            "--max-error", "1e-3", "-q", "--no-pyramid"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "near-exact halo" in printed and "against the exact halo" in printed and "bound 0.001" in printed
    first = zarr.open_array(str(out / "0"))[:]
    assert recorded_fingerprint(out)["grid"]["halo"][0] < 48
    assert main(argv) == 0  # a rerun of a complete output keeps the same halo
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], first)
    bad = argv.copy()
    bad[bad.index("effective")] = "effective:7"
    with pytest.raises(SystemExit) as stopped:  # argparse's own error: one line, exit 2
        main(bad)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "effective:TOL" in err and "\n" not in err


def test_an_interrupted_near_exact_prediction_resumes_into_the_same_output(net, picture, tmp_path):
    pytest.importorskip("zarr")
    config = PredictConfig(core=64, halo="effective", pyramid=False)
    whole = predict(net, picture, config=config)

    def stop(done):
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(net, picture, tmp_path / "o.zarr", config=PredictConfig(core=64, halo="effective", pyramid=False,
                                                                         tiles_per_batch=1), progress=stop)
    found = []
    predict(net, picture, tmp_path / "o.zarr", config=PredictConfig(core=64, halo="effective", pyramid=False,
                                                                     tiles_per_batch=1), report=found)
    assert 0 < found[0].tiles_computed < found[0].tiles_total
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "o.zarr" / "0"))[:], whole)


def test_one_tile_over_the_whole_image_needs_no_measurement(net, picture):
    found = []
    out = predict(net, picture, config=PredictConfig(halo="effective"), report=found)  # the default core: one tile
    check = found[0].halo_check
    assert found[0].tiles_total == 1 and check.samples == 0 and check.error == 0.0
    assert "one tile covers the image" in check.summary()
    np.testing.assert_array_equal(out, predict(net, picture))
