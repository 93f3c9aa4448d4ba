"""Tile geometry, receptive field, intensity normalization, and the tiled prediction engine.

The engine, room by room: :mod:`~seamfree.tiling.plan` (what is decided before the first tile),
:mod:`~seamfree.tiling.engine` (tiles → batched forward passes), :mod:`~seamfree.tiling.sinks` (crop or blend
into an output) and :mod:`~seamfree.tiling.predict` (the verbs that tie them together).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seamfree._lazy import lazy_exports

if TYPE_CHECKING:
    from seamfree.allocator import tune_cpu_allocator
    from seamfree.models.receptive import ReceptiveField, measure_receptive_field
    from seamfree.tiling.blend import BlendAccumulator, weight_window
    from seamfree.tiling.engine import (
        eval_mode,
        forward_batch,
        predict_batches,
        read_window,
        resolve_activation,
        run_tiles,
    )
    from seamfree.tiling.grid import Tile, TileGrid, as_axis_tuple
    from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
    from seamfree.tiling.plan import PredictConfig, PredictionPlan, TilingSpec, plan_prediction
    from seamfree.tiling.predict import PredictionReport, predict, predict_tiles, predict_whole
    from seamfree.tiling.sinks import BlendSink, CropSink, TileSink, sink_for
    from seamfree.tiling.specs import OutputSpec, RuntimeSpec
    from seamfree.tiling.suggest import TilingSuggestion, suggest_tiling

# public name -> module that defines it, imported on first use (a reader importing a light module of
# this package does not import torch)
_EXPORTS = {
    "tune_cpu_allocator": "seamfree.allocator",
    "ReceptiveField": "seamfree.models.receptive",
    "measure_receptive_field": "seamfree.models.receptive",
    "BlendAccumulator": "seamfree.tiling.blend",
    "weight_window": "seamfree.tiling.blend",
    "eval_mode": "seamfree.tiling.engine",
    "forward_batch": "seamfree.tiling.engine",
    "predict_batches": "seamfree.tiling.engine",
    "read_window": "seamfree.tiling.engine",
    "resolve_activation": "seamfree.tiling.engine",
    "run_tiles": "seamfree.tiling.engine",
    "Tile": "seamfree.tiling.grid",
    "TileGrid": "seamfree.tiling.grid",
    "as_axis_tuple": "seamfree.tiling.grid",
    "IntensityNormalization": "seamfree.tiling.normalize",
    "compute_normalization": "seamfree.tiling.normalize",
    "PredictConfig": "seamfree.tiling.plan",
    "PredictionPlan": "seamfree.tiling.plan",
    "TilingSpec": "seamfree.tiling.plan",
    "plan_prediction": "seamfree.tiling.plan",
    "PredictionReport": "seamfree.tiling.predict",
    "predict": "seamfree.tiling.predict",
    "predict_tiles": "seamfree.tiling.predict",
    "predict_whole": "seamfree.tiling.predict",
    "BlendSink": "seamfree.tiling.sinks",
    "CropSink": "seamfree.tiling.sinks",
    "TileSink": "seamfree.tiling.sinks",
    "sink_for": "seamfree.tiling.sinks",
    "OutputSpec": "seamfree.tiling.specs",
    "RuntimeSpec": "seamfree.tiling.specs",
    "TilingSuggestion": "seamfree.tiling.suggest",
    "suggest_tiling": "seamfree.tiling.suggest",
}

__all__ = [
    "BlendAccumulator",
    "BlendSink",
    "CropSink",
    "IntensityNormalization",
    "OutputSpec",
    "PredictConfig",
    "PredictionPlan",
    "PredictionReport",
    "ReceptiveField",
    "RuntimeSpec",
    "Tile",
    "TileGrid",
    "TileSink",
    "TilingSpec",
    "TilingSuggestion",
    "as_axis_tuple",
    "compute_normalization",
    "eval_mode",
    "forward_batch",
    "measure_receptive_field",
    "plan_prediction",
    "predict",
    "predict_batches",
    "predict_tiles",
    "predict_whole",
    "read_window",
    "resolve_activation",
    "run_tiles",
    "sink_for",
    "suggest_tiling",
    "tune_cpu_allocator",
    "weight_window",
]

lazy_exports(__name__, _EXPORTS)
