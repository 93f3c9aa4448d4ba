"""Slow: training on a real dataset (isbi2012 membranes) reaches the Dice documented in docs/training.md."""

from __future__ import annotations

import numpy as np
import pytest

from seamfree.data.datasets import load_dataset
from seamfree.metrics import dice
from seamfree.models import load_model
from seamfree.tiling import PredictConfig, predict
from seamfree.training import load_config, train

# Measured on the development machine with this exact configuration: test Dice 0.747 after 500 iterations
# (141 s, docs/training.md). The bound leaves room for run-to-run differences of thread scheduling.
ISBI_TEST_DICE = 0.70


@pytest.mark.slow
def test_isbi2012_membranes_reach_the_documented_test_dice(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SEAMFREE_DATA", str(data_dir))
    config = load_config(base={
        "data": {"source": "isbi2012"},
        "model": {"depth": 3, "features": 16, "norm": "batchrenorm"},
        "training": {"iterations": 500, "batch_size": 4, "patch_size": [128, 128], "learning_rate": 2e-3,
                     "validate_every": 250, "val_core": 256, "foreground_fraction": 0.0},
        "output": str(tmp_path / "isbi"),
    })
    result = train(config)
    model = load_model(result.best)
    scores = []
    for image, mask in load_dataset("isbi2012", "test", root=data_dir):
        probabilities = predict(model, image, config=PredictConfig(core=256))
        scores.append(dice(probabilities[0] > 0.5, mask[0] > 0))
    test_dice = float(np.mean(scores))
    print(f"isbi2012 test Dice {test_dice:.3f} (validation {result.best_dice:.3f}, {result.seconds:.0f} s)")
    assert test_dice >= ISBI_TEST_DICE
