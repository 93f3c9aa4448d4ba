"""The study's pattern on models trained inside the test (seconds each, synthetic nuclei).

InstanceNorm: clear tile mismatch, zero train/eval disparity. BatchNorm trained with batch size 2: tile
mismatch at floating-point noise, positive disparity. BatchRenorm: tile mismatch at noise, disparity well below
BatchNorm's.
"""

from __future__ import annotations

import pytest

from seamfree.data.synthetic import SyntheticSpec, synthetic_image
from seamfree.diagnostics import DiagnoseConfig, diagnose
from seamfree.models import load_model
from seamfree.training import load_config, train

CONDITIONS = {"object_size": 6.0, "gradient": 0.4, "empty_fraction": 0.15, "debris": 4, "region_shift": 0.2}


@pytest.fixture(scope="module")
def diagnoses(tmp_path_factory):
    image, mask = synthetic_image((256, 256), SyntheticSpec("nuclei", **CONDITIONS), seed=99)
    out = {}
    for norm in ("instance", "batch", "batchrenorm"):
        config = load_config(base={
            "data": {"synthetic_shape": [192, 192], "synthetic_train": 3, "synthetic_val": 0,
                     "synthetic_options": CONDITIONS},
            "model": {"depth": 2, "features": 8, "norm": norm, "norm_options": {"momentum": 0.05}
                      if norm != "instance" else {}},
            "training": {"iterations": 120, "batch_size": 2, "patch_size": [48, 48], "learning_rate": 3e-3,
                         "validate_every": 1000, "renorm_warmup": 0.3, "renorm_ramp": 0.3},
            "output": str(tmp_path_factory.mktemp(norm)),
        })
        model = load_model(train(config).last)
        out[norm] = diagnose(model, image, ground_truth=mask, name=norm,
                             config=DiagnoseConfig(core=64, ted_batches=6))
    return out


def test_instance_norm_has_tile_mismatch_and_no_disparity(diagnoses):
    d = diagnoses["instance"]
    assert d.tile_mismatch.tm_abs > 1e-3 and d.tile_mismatch.tm_dice > 1e-3
    assert d.disparity.ted_dice == 0.0 and d.disparity.ted_abs == 0.0
    assert d.recommendation.verdict == "tiling artifacts"


def test_batch_norm_is_seamless_but_has_disparity(diagnoses):
    d = diagnoses["batch"]
    assert d.tile_mismatch.tm_abs < 1e-6 and d.exactness.exact
    assert d.disparity.ted_abs > 1e-3


def test_batch_renorm_is_seamless_with_far_less_disparity(diagnoses):
    d, bn = diagnoses["batchrenorm"], diagnoses["batch"]
    assert d.tile_mismatch.tm_abs < 1e-6 and d.exactness.exact
    assert d.disparity.ted_abs < 0.5 * bn.disparity.ted_abs
    print({k: (v.tile_mismatch.tm_dice, v.tile_mismatch.tm_abs, v.disparity.ted_dice, v.disparity.ted_abs, v.dice)
           for k, v in diagnoses.items()})


@pytest.mark.slow
def test_the_pattern_holds_on_real_electron_microscopy(data_dir, tmp_path_factory, monkeypatch):
    """isbi2012 membranes: the same three models, trained briefly on the real sections, diagnosed on a test one."""
    from seamfree.data.datasets import load_dataset

    monkeypatch.setenv("SEAMFREE_DATA", str(data_dir))
    image, mask = load_dataset("isbi2012", "test", root=data_dir)[0]
    found = {}
    for norm in ("instance", "batch", "batchrenorm"):
        config = load_config(base={
            "data": {"source": "isbi2012", "limit": 6},
            "model": {"depth": 2, "features": 8, "norm": norm,
                      "norm_options": {"momentum": 0.05} if norm != "instance" else {}},
            "training": {"iterations": 150, "batch_size": 2, "patch_size": [64, 64], "learning_rate": 3e-3,
                         "validate_every": 1000, "renorm_warmup": 0.3, "renorm_ramp": 0.3},
            "output": str(tmp_path_factory.mktemp(f"isbi-{norm}")),
        })
        model = load_model(train(config).last)
        found[norm] = diagnose(model, image, ground_truth=mask, name=norm,
                               config=DiagnoseConfig(core=128, ted_batches=6))
    print({k: (v.tile_mismatch.tm_dice, v.tile_mismatch.tm_abs, v.disparity.ted_dice, v.disparity.ted_abs)
           for k, v in found.items()})
    assert found["instance"].tile_mismatch.tm_abs > 1e-3 and found["instance"].disparity.ted_abs == 0.0
    assert found["batch"].tile_mismatch.tm_abs < 1e-6 and found["batch"].disparity.ted_abs > 1e-3
    assert found["batchrenorm"].tile_mismatch.tm_abs < 1e-6
    assert found["batchrenorm"].disparity.ted_abs < 0.5 * found["batch"].disparity.ted_abs
