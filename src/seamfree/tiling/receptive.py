"""Former home of the receptive-field measurement and the tiling suggestion (kept for imports of seamfree ≤ 0.2).

The measurement is part of the model contract now (:mod:`seamfree.models.receptive`, cached by
:func:`seamfree.models.describe_model`); the suggestion is :mod:`seamfree.tiling.suggest`.
"""

from seamfree.models.receptive import ReceptiveField, measure_receptive_field
from seamfree.tiling.suggest import TilingSuggestion, activation_bytes_per_voxel, default_memory_budget, suggest_tiling

__all__ = ["ReceptiveField", "TilingSuggestion", "activation_bytes_per_voxel", "default_memory_budget",
           "measure_receptive_field", "suggest_tiling"]
