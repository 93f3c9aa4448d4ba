"""The options of :func:`~seamfree.fix.fix_model`."""

from __future__ import annotations

from dataclasses import dataclass

from seamfree.errors import ConfigError

__all__ = ["FixConfig"]


@dataclass(frozen=True)
class FixConfig:
    """Options of :func:`fix_model`.

    Attributes
    ----------
    iterations : int
        Training steps of the self-distillation (per-tile norms), the budget.
    patch_size : int or tuple, optional
        Training patch; default the model's recorded training patch, at least 128 (2D) / 64 (3D) per axis.
    batch_size : int
        Patches per step (BatchRenorm's batch statistics need a few).
    learning_rate : float
    agreement : float
        The Dice between the fixed and the original model's masks on held-out data the fix aims at (its stated
        tolerance); training stops early once reached at a check after two thirds of the budget.
    threshold : float
        Probability threshold of the masks.
    check_every : int
        Steps between agreement checks.
    seed : int
    device : str
    to : {"batchrenorm", "batch"}
        The layers a per-tile normalization becomes: BatchRenorm (default: training with small batches stays
        safe afterwards) or plain BatchNorm. Both use running statistics at inference, so both are exact.
    activation : {"auto", "none", "sigmoid", "softmax"}
        What turns the model's output into probabilities (auto: as ``predict`` decides; foreign models output
        logits, so pass sigmoid or softmax for them). The masks and the distillation loss follow it.
    """

    iterations: int = 600
    patch_size: int | tuple[int, ...] | None = None
    batch_size: int = 8
    learning_rate: float = 2e-3
    agreement: float = 0.97
    threshold: float = 0.5
    check_every: int = 100
    seed: int = 0
    device: str = "cpu"
    activation: str = "auto"
    to: str = "batchrenorm"

    def __post_init__(self) -> None:
        if self.to not in ("batchrenorm", "batch"):
            raise ConfigError(f"to must be 'batchrenorm' or 'batch' (norms with running statistics), got {self.to!r}")
        if self.activation not in ("auto", "none", "sigmoid", "softmax"):
            raise ConfigError(f"activation must be 'auto', 'none', 'sigmoid' or 'softmax', got {self.activation!r}")
        for name in ("iterations", "batch_size", "check_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.agreement <= 1.0:
            raise ConfigError(f"agreement must be a Dice in (0, 1], got {self.agreement!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate!r}")
