"""Tile geometry, receptive field, intensity normalization, and the tiled prediction engine.

The engine, room by room: :mod:`~seamfree.tiling.plan` (what is decided before the first tile),
:mod:`~seamfree.tiling.engine` (tiles → batched forward passes), :mod:`~seamfree.tiling.sinks` (crop or blend
into an output) and :mod:`~seamfree.tiling.predict` (the verbs that tie them together).
"""

from seamfree.allocator import tune_cpu_allocator
from seamfree.models.receptive import ReceptiveField, measure_receptive_field
from seamfree.tiling.blend import BlendAccumulator, weight_window
from seamfree.tiling.engine import eval_mode, forward_batch, predict_batches, read_window, resolve_activation, run_tiles
from seamfree.tiling.grid import Tile, TileGrid, as_axis_tuple
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.tiling.plan import PredictConfig, PredictionPlan, TilingSpec, plan_prediction
from seamfree.tiling.predict import PredictionReport, predict, predict_tiles, predict_whole
from seamfree.tiling.sinks import BlendSink, CropSink, TileSink, sink_for
from seamfree.tiling.specs import OutputSpec, RuntimeSpec
from seamfree.tiling.suggest import TilingSuggestion, suggest_tiling

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
