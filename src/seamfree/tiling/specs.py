"""The narrow option sets the prediction engine reads: how a batch of tiles runs, and what is stored."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from seamfree.errors import ConfigError

__all__ = ["ACTIVATIONS", "DEFAULT_TOLERANCE", "Activation", "OutputKind", "OutputSpec", "RuntimeSpec", "Stitching",
           "effective_tolerance", "parse_halo"]

# The near-exact mode's default gradient tolerance (``halo="effective"``, :mod:`seamfree.tiling.near_exact`).
DEFAULT_TOLERANCE = 1e-3

Activation = Literal["auto", "none", "sigmoid", "softmax"]
ACTIVATIONS = ("auto", "none", "sigmoid", "softmax")
OutputKind = Literal["float32", "float16", "uint16", "uint8", "mask"]
# what each kind stores, and the largest stored value of a probability of 1 (integer kinds)
OUTPUT_KINDS = {"float32": (np.float32, None), "float16": (np.float16, None), "uint16": (np.uint16, 65535.0),
                "uint8": (np.uint8, 255.0), "mask": (np.uint8, None)}
Stitching = Literal["crop", "blend"]


@dataclass(frozen=True)
class RuntimeSpec:
    """How one batch of tiles runs.

    Attributes
    ----------
    device : str
        "cpu", "cuda", "cuda:1", ...
    amp : bool
        bfloat16 autocast on CUDA; ignored elsewhere.
    tta : bool
        Average over all flips of the spatial axes.
    activation : {"auto", "none", "sigmoid", "softmax"}
        Applied to the model output; "auto" must be resolved for a model (:meth:`resolved`) before running.
    output : int or str, optional
        Index or key of the segmentation among a tuple/dict model output.
    channels_last : bool
        Batches in channels-last layout (``channels_last_3d`` in 3D), for cuDNN's NHWC kernels.
    compile : bool
        Run ``torch.compile`` of the model (compiled once per model object).
    """

    device: str = "cpu"
    amp: bool = False
    tta: bool = False
    activation: str = "none"
    output: int | str | None = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    def resolved(self, activation: str, output: int | str | None = None) -> RuntimeSpec:
        """Return this spec with the model's resolved ``activation`` (and selected ``output``)."""
        return replace(self, activation=activation, output=self.output if output is None else output)


@dataclass(frozen=True)
class OutputSpec:
    """What a prediction stores: probabilities (float32, or float16: half the bytes, error below 5e-4), probabilities
    as integers (uint8: 0..255, error at most 1/510; uint16: 0..65535, at most 1/131070), or a mask.

    A mask thresholds one channel at ``threshold`` and takes the argmax of several.
    """

    kind: OutputKind = "float32"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ConfigError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.threshold <= 1.0:  # also refuses NaN, which would give an all-zero mask
            raise ConfigError(f"threshold must lie in [0, 1] (a probability), got {self.threshold}")

    @property
    def dtype(self) -> np.dtype:
        """dtype of the stored values."""
        return np.dtype(OUTPUT_KINDS[self.kind][0])

    @property
    def full_scale(self) -> float | None:
        """The stored value of a probability of 1 for the integer kinds (uint8: 255, uint16: 65535), else None."""
        return OUTPUT_KINDS[self.kind][1]

    def stored_channels(self, out_channels: int) -> int:
        """Return how many channels are stored for a model with ``out_channels`` outputs."""
        return 1 if self.kind == "mask" else out_channels

    def convert(self, values: np.ndarray) -> np.ndarray:
        """Return activated predictions ``(C, *spatial)`` as stored.

        Examples
        --------
        >>> OutputSpec("uint8").convert(np.array([[0.0, 0.5, 1.0]])).tolist()
        [[0, 128, 255]]
        """
        if self.kind in ("float32", "float16"):
            return values.astype(self.dtype, copy=False)
        full = self.full_scale
        if full is not None:  # uint8, uint16: one temporary, rounded and clipped in place
            scaled = values * np.float32(full) if values.dtype == np.float32 else values * full
            np.rint(scaled, out=scaled)
            np.clip(scaled, 0, full, out=scaled)
            return scaled.astype(self.dtype)
        if values.shape[0] == 1:
            return (values > self.threshold).astype(np.uint8)
        return np.argmax(values, axis=0)[np.newaxis].astype(np.uint8)


def effective_tolerance(halo: object) -> float | None:
    """The gradient tolerance of ``halo="effective"`` / ``"effective:TOL"``; None for any other halo.

    Examples
    --------
    >>> effective_tolerance("effective"), effective_tolerance("effective:1e-2"), effective_tolerance(32)
    (0.001, 0.01, None)
    """
    if not isinstance(halo, str) or not halo.startswith("effective"):
        return None
    rest = halo[len("effective"):]
    if not rest:
        return DEFAULT_TOLERANCE
    try:
        tolerance = float(rest[1:]) if rest.startswith(":") else float("nan")
    except ValueError:
        tolerance = float("nan")
    if not 0.0 < tolerance < 1.0:
        raise ConfigError(f"halo {halo!r} is not 'effective' or 'effective:TOL' with 0 < TOL < 1 (a relative "
                          "gradient threshold, e.g. effective:1e-3)")
    return tolerance


def parse_halo(text: str) -> int | tuple[int, ...] | str:
    """A halo written as text (the CLI's ``--halo``, a YAML value): ``"auto"``, the near-exact ``"effective"`` /
    ``"effective:TOL"``, voxels per side (``"32"``) or per axis (``"8,32,32"``). Torch-free, so that a command line
    is checked before any model is loaded.

    Examples
    --------
    >>> parse_halo("32"), parse_halo("8,32,32"), parse_halo("effective:1e-2")
    (32, (8, 32, 32), 'effective:1e-2')
    """
    text = text.strip()
    if text == "auto" or effective_tolerance(text) is not None:
        return text
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise ConfigError(f"halo must be 'auto', voxels per side (32, or 8,32,32 per axis) or effective[:TOL] (the "
                          f"near-exact mode, e.g. effective:1e-3), got {text!r}")
    return values[0] if len(values) == 1 else values
