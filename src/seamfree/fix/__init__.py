"""Fix a trained model's tile- or batch-dependence without labels (:func:`fix_model`), used by the CLI
(``seamfree fix``), the napari Fix widget and Python alike."""

from seamfree.fix.fix import FixConfig, FixResult, fix_model
from seamfree.fix.replace import Fixability, fixability, replace_tile_dependent_norms

__all__ = ["FixConfig", "FixResult", "Fixability", "fix_model", "fixability", "replace_tile_dependent_norms"]
