"""Tile geometry, receptive field, blending, intensity normalization and the tiled prediction engine."""

from seamfree.tiling.allocator import tune_cpu_allocator
from seamfree.tiling.blend import BlendAccumulator, weight_window
from seamfree.tiling.grid import Tile, TileGrid, as_axis_tuple
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.tiling.predict import (
    PredictConfig,
    PredictionReport,
    predict,
    predict_tiles,
    predict_whole,
    read_window,
    resolve_activation,
)
from seamfree.tiling.receptive import (
    ReceptiveField,
    TilingSuggestion,
    measure_receptive_field,
    suggest_tiling,
)

__all__ = [
    "BlendAccumulator",
    "IntensityNormalization",
    "PredictConfig",
    "PredictionReport",
    "ReceptiveField",
    "Tile",
    "TileGrid",
    "TilingSuggestion",
    "as_axis_tuple",
    "compute_normalization",
    "measure_receptive_field",
    "predict",
    "predict_tiles",
    "predict_whole",
    "read_window",
    "resolve_activation",
    "suggest_tiling",
    "tune_cpu_allocator",
    "weight_window",
]
