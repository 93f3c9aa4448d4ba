"""Checkpoints that carry their full configuration, so a model is rebuilt without any training script."""

from __future__ import annotations

import logging
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seamfree.errors import CheckpointError, ConfigError
from seamfree.layers.batchrenorm import BatchRenormNd
from seamfree.models.bioimageio import is_package, load_package
from seamfree.models.consent import check_torchscript, is_torchscript_archive
from seamfree.models.unet import UNet
from seamfree.models.vit import ViTSegmenter

__all__ = ["ARCHITECTURES", "auto_device", "build_model", "check_device", "load_model", "model_metadata", "save_model"]

logger = logging.getLogger(__name__)

FORMAT = "seamfree-checkpoint"
FORMAT_VERSION = 1
ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": UNet, "vit": ViTSegmenter}


def build_model(architecture: str, config: dict[str, Any]) -> nn.Module:
    """Return a new, untrained model of ``architecture`` built from its constructor ``config``."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    config = dict(config)
    if architecture == "unet":
        spatial_dims = config.pop("spatial_dims")
        in_channels, out_channels = config.pop("in_channels"), config.pop("out_channels")
        return UNet(spatial_dims, in_channels, out_channels, **config)
    in_channels, out_channels = config.pop("in_channels"), config.pop("out_channels")
    if "patch_size" in config:  # checkpoints written before the token size had its own name
        config["token_size"] = config.pop("patch_size")
    return ViTSegmenter(in_channels, out_channels, **config)


def _current_config(model: nn.Module) -> dict[str, Any]:
    """Return the model's config with the BatchRenorm schedule actually in its layers."""
    config = dict(model.config)  # type: ignore[arg-type]
    renorm = next((m for m in model.modules() if isinstance(m, BatchRenormNd)), None)
    if renorm is not None and config.get("norm") == "batchrenorm":
        s = renorm.schedule
        config["norm_options"] = {
            **dict(config.get("norm_options") or {}),
            "warmup_steps": s.warmup_steps, "ramp_steps": s.ramp_steps, "r_max": s.r_max, "d_max": s.d_max,
        }
    return config


def save_model(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with its architecture, configuration and ``metadata`` to ``path``; return the path.

    ``metadata`` holds training facts (patch size, batch size, iterations, dataset, metrics) that
    diagnostics use as defaults. The file is written atomically (temporary file, then rename).

    Examples
    --------
    >>> import tempfile, torch
    >>> net = UNet(2, 1, 1, depth=1, features=2)
    >>> path = save_model(net, tempfile.mkdtemp() + "/net.pt", metadata={"patch_size": [64, 64]})
    >>> load_model(path).config["norm"]
    'batchrenorm'
    """
    architecture = getattr(model, "architecture", None)
    if architecture not in ARCHITECTURES or not isinstance(getattr(model, "config", None), dict):
        raise CheckpointError(
            f"save_model stores seamfree models (UNet, ViTSegmenter), got {type(model).__name__}; "
            "save other models with torch.jit.save(torch.jit.script(model), path)"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": _current_config(model),
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as handle:  # an unwritable folder is an OSError here, with its errno
        torch.save(payload, handle)
    os.replace(temporary, path)
    return path


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """Return the training metadata a model was loaded with (empty for foreign models)."""
    return dict(getattr(model, "seamfree_metadata", {}) or {})


def auto_device() -> str:
    """The device ``"auto"`` means: the first CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a torch device (``"auto"``: :func:`auto_device`); ConfigError for a malformed name or a
    GPU this torch cannot use."""
    if device == "auto":
        device = auto_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {str(device)!r} is not a device name; pass cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        built = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"CUDA requested (device {str(device)!r}) but {built}; install a CUDA build of torch "
                          "(see the README) or pass --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are "
                          "visible; pass cuda:0 or another index below that")
    return parsed


def load_model(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", trust_code: bool = False
) -> nn.Module:
    """Return the model stored at ``path``, in eval mode, on ``device``.

    Reads seamfree checkpoints (rebuilt from their configuration), TorchScript files and bioimage.io model
    packages (``rdf.yaml``, its folder or ``.zip``; see :mod:`seamfree.models.bioimageio`). TorchScript is code:
    without consent it loads only when its archive passes :func:`~seamfree.models.consent.check_torchscript`. Only with
    ``trust_code=True``, ``torch.export`` programs (``.pt2``; their input shapes are fixed at export) and
    pickled full ``nn.Module`` objects (both unpickle, which runs code from the file: only for files you trust).
    The device is checked first: a CUDA device on a torch build without CUDA is a ConfigError.
    """
    device = check_device(device)
    path = Path(path)
    if is_package(path):
        return load_package(path, device=device, trust_code=trust_code)
    if not path.is_file():
        raise CheckpointError(f"model file {str(path)!r} does not exist; pass the path of a checkpoint")
    if not trust_code and is_torchscript_archive(path):
        check_torchscript(path, str(path))  # TorchScript is code: its __setstate__ runs inside torch.load
    try:
        with warnings.catch_warnings():
            # torch.load hands TorchScript archives to torch.jit.load, warning twice; that is what we want.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            payload = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, KeyError, IndexError, ValueError,
            zipfile.BadZipFile) as exc:  # what the weights-only unpickler raises on a file that is no checkpoint
        return _load_foreign(path, device, trust_code, exc)
    if isinstance(payload, torch.jit.ScriptModule):
        logger.info("loaded TorchScript model from %s", path)
        return payload.eval()
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _rebuild(path, payload, device)
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(
            f"{str(path)!r} holds only a state_dict, not a model; build the model and call "
            "model.load_state_dict(torch.load(path)), or save it with seamfree.save_model"
        )
    raise CheckpointError(f"{str(path)!r} is not a model checkpoint (found a {type(payload).__name__})")


def _rebuild(path: Path, payload: dict[str, Any], device: str | torch.device) -> nn.Module:
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version}, this seamfree reads {FORMAT_VERSION}; "
            "upgrade seamfree"
        )
    try:
        model = build_model(payload["architecture"], payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"cannot rebuild the model in {str(path)!r}: {exc}") from exc
    model.seamfree_metadata = dict(payload.get("metadata") or {})  # type: ignore[assignment]
    return model.to(device).eval()


def _load_foreign(path: Path, device: str | torch.device, trust_code: bool, cause: Exception) -> nn.Module:
    try:
        # Deprecated in recent torch, but users' existing models are TorchScript files: keep reading them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
        logger.info("loaded TorchScript model from %s", path)
        return module.eval()
    except (RuntimeError, ValueError):
        pass
    if not trust_code:
        # torch.export archives and pickled modules both unpickle code from the file: never without consent
        raise CheckpointError(
            f"{str(path)!r} is neither a seamfree checkpoint nor TorchScript ({type(cause).__name__}); if it is a "
            "torch.export program (.pt2) or a pickled nn.Module from a source you trust, pass trust_code=True "
            "(CLI: --trust-code): loading either runs code stored in the file"
        ) from cause
    try:
        program = torch.export.load(str(path))
        logger.info("loaded torch.export program from %s", path)
        return program.module().to(device)
    except Exception:  # not an exported program either: try pickle
        pass
    try:
        module = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # unpickling can fail in arbitrary ways
        raise CheckpointError(f"cannot unpickle {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise CheckpointError(f"{str(path)!r} unpickles to a {type(module).__name__}, not an nn.Module")
    logger.warning("loaded a pickled module from %s (code from the file was executed)", path)
    return module.eval()
