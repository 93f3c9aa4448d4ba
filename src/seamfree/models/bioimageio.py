"""bioimage.io model packages: load them as seamfree models, export seamfree models as packages.

Loading (``rdf.yaml``, a package folder or its ``.zip``) prefers ``pytorch_state_dict`` weights, whose
architecture is a real ``nn.Module`` the audit can see layer by layer, and falls back to ``torchscript``. An
architecture is built without consent only when it is one of the network classes of
:data:`~seamfree.models.consent.TRUSTED_ARCHITECTURES`; any other ``import_from`` callable, an architecture
shipped as a Python file inside the package, and TorchScript whose code fails the static check need
``trust_code`` like any other file-borne code (:mod:`seamfree.models.consent`).

The package's processing maps onto seamfree's: ``scale_range`` → percentile normalization with its
percentiles, ``zero_mean_unit_variance`` → mean/std, ``fixed_zero_mean_unit_variance`` → fixed statistics,
``sigmoid``/``softmax`` → the activation. A ``per_sample`` statistic is computed over the *whole* image, once:
per-tile statistics are themselves a tiling artifact. The declared output ``halo`` is kept, so that
:func:`~seamfree.models.describe_model` can flag one smaller than the measured receptive field.

Exporting writes a package whose halo and input step are the *measured* receptive field and network stride,
with the audit's verdict in its description; it passes ``bioimageio.core``'s own ``test_model``.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seamfree.errors import CheckpointError, ConfigError
from seamfree.layers.modes import eval_mode
from seamfree.models.consent import check_architecture, check_torchscript

__all__ = ["PackageInfo", "export_bioimageio", "is_package", "load_package", "package_info"]

logger = logging.getLogger(__name__)

_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


@dataclass(frozen=True)
class PackageInfo:
    """What a loaded bioimage.io package declares, in seamfree's terms.

    Attributes
    ----------
    name : str
    weights : {"pytorch_state_dict", "torchscript"}
        The weights that were loaded.
    normalization : dict or None
        ``{"method": ..., "low": ..., "high": ..., "offset": ..., "scale": ...}`` for
        :class:`~seamfree.tiling.IntensityNormalization` (None: the package declares no preprocessing).
    activation : {"none", "sigmoid", "softmax"}
    declared_halo : tuple of int or None
        The output halo the package declares (per spatial axis).
    spatial_axes : str
        The package's spatial axes, e.g. "yx" or "zyx".
    channel_names : tuple of str or None
        The names of the output's channels (written into the OME metadata of predictions).
    """

    name: str
    weights: str
    normalization: dict[str, Any] | None
    activation: str
    declared_halo: tuple[int, ...] | None
    spatial_axes: str
    channel_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "normalization": self.normalization,
                "activation": self.activation, "spatial_axes": self.spatial_axes,
                "declared_halo": None if self.declared_halo is None else list(self.declared_halo)}


def _require() -> None:
    try:
        import bioimageio.core
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise ConfigError("bioimage.io packages need the bioimageio extra: pip install 'seamfree[bioimageio]'") from exc


def is_package(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a bioimage.io package: an ``rdf.yaml``, a folder holding one, or a zip holding one."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in _RDF_NAMES)
    if path.name.endswith(_RDF_NAMES):
        return path.is_file()
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(Path(n).name in _RDF_NAMES for n in archive.namelist())
    return False


def package_info(model: nn.Module) -> PackageInfo | None:
    """The package a model was loaded from (None for other models)."""
    info = getattr(model, "seamfree_package", None)
    return info if isinstance(info, PackageInfo) else None


def _load_description(path: Path) -> Any:
    _require()
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    source = path / next(n for n in _RDF_NAMES if (path / n).is_file()) if path.is_dir() else path
    if path.suffix == ".zip":
        _check_members(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # no I/O checks: they fetch the cite and documentation URLs, which seamfree does not read
        descr = load_description(source, format_version="latest", perform_io_checks=False)
        gc.collect()  # bioimageio.spec leaves zip file handles to the collector: close them here, quietly
    if not isinstance(descr, ModelDescr):
        summary = getattr(descr, "validation_summary", None)
        errors = [str(getattr(e, "msg", e)) for d in getattr(summary, "details", []) for e in getattr(d, "errors", [])]
        reason = errors[0].splitlines()[0] if errors else f"it describes a {getattr(descr, 'type', 'non-model')}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            del descr, summary  # the invalid description holds the package's zip open: closed here, quietly
            gc.collect()
        raise CheckpointError(f"{str(path)!r} is not a valid bioimage.io model package: {reason[:200]}; check it "
                              "with `bioimageio validate` or re-export it")
    return descr


_MAX_DESCRIPTION = 16 * 2**20  # an rdf.yaml is kilobytes; megabytes of YAML is an attack, not a model
_MAX_MEMBER = 64 * 2**30


def _check_members(path: Path) -> None:
    """CheckpointError for a package zip whose members claim absurd sizes (checked before anything inflates)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            limit = _MAX_DESCRIPTION if Path(info.filename).suffix in (".yaml", ".yml", ".md") else _MAX_MEMBER
            if info.file_size > limit:
                raise CheckpointError(
                    f"{str(path)!r}: member {info.filename!r} inflates to {info.file_size} bytes "
                    f"({info.compress_size} stored), above the {limit}-byte limit for such a file; this is not a "
                    "model package seamfree will open (re-export it, or unpack it and check the file)")


def _normalization(descr: Any) -> dict[str, Any] | None:
    for step in descr.inputs[0].preprocessing:
        kind, kwargs = step.id, getattr(step, "kwargs", None)  # type: Any, Any
        if kind == "scale_range":
            if getattr(kwargs, "mode", "per_sample") == "per_dataset":
                logger.warning("the package's scale_range is per_dataset; seamfree uses the image's own statistics")
            return {"method": "percentile", "low": float(kwargs.min_percentile), "high": float(kwargs.max_percentile)}
        if kind == "zero_mean_unit_variance":
            return {"method": "meanstd"}
        if kind == "fixed_zero_mean_unit_variance":
            mean, std = np.atleast_1d(kwargs.mean), np.atleast_1d(kwargs.std)
            return {"method": "meanstd", "offset": [float(m) for m in mean], "scale": [float(s) for s in std]}
    return None


def _activation(descr: Any) -> str:
    for step in descr.outputs[0].postprocessing:
        if step.id in ("sigmoid", "softmax"):
            return str(step.id)
    return "none"


def _channel_names(descr: Any) -> tuple[str, ...] | None:
    for axis in descr.outputs[0].axes:
        names = getattr(axis, "channel_names", None) if getattr(axis, "type", "") == "channel" else None
        if names:
            return tuple(str(name) for name in names)
    return None


def _declared(descr: Any) -> tuple[tuple[int, ...] | None, str]:
    axes = [a for a in descr.outputs[0].axes if getattr(a, "type", "") == "space"]
    halo = tuple(int(getattr(a, "halo", 0) or 0) for a in axes)
    spatial = "".join(str(a.id) for a in descr.inputs[0].axes if getattr(a, "type", "") == "space")
    kinds = [str(getattr(a, "type", "")) for a in descr.inputs[0].axes]
    if kinds[:2] != ["batch", "channel"] and kinds[:1] != ["batch"]:
        raise CheckpointError(f"the package's input axes {kinds} are not batch, channel, space...: seamfree feeds "
                              "(N, C, *spatial) tensors; re-export the model with that axis order")
    return (halo if axes else None), spatial


def _weights(descr: Any, device: torch.device, trust_code: bool, path: Path) -> tuple[nn.Module, str]:
    weights = descr.weights
    state = weights.pytorch_state_dict
    if state is not None:
        refusal = None if trust_code else _architecture_refusal(state.architecture, path)
        if refusal is not None and weights.torchscript is None:
            raise refusal
        if refusal is None:
            from bioimageio.core.backends.pytorch_backend import load_torch_model

            try:
                return load_torch_model(state, load_state=True, devices=[str(device)]).eval(), "pytorch_state_dict"
            except Exception as exc:  # the architecture's own code can fail in any way
                if weights.torchscript is None:
                    raise CheckpointError(f"cannot build the architecture of {str(path)!r}: "
                                          f"{type(exc).__name__}: {exc}") from exc
                logger.warning("the package's pytorch_state_dict weights did not load (%s); using torchscript", exc)
        else:
            logger.warning("%s; using the package's torchscript weights", refusal)
    if weights.torchscript is not None:
        data = weights.torchscript.get_reader().read()
        if not trust_code:
            check_torchscript(data, f"{path}: torchscript weights")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location=device)
        return module.eval(), "torchscript"
    present = [name for name in type(weights).model_fields if getattr(weights, name, None) is not None]
    raise CheckpointError(f"{str(path)!r} has no PyTorch weights (it has {', '.join(present)}); seamfree runs "
                          "pytorch_state_dict or torchscript weights")


def _architecture_refusal(architecture: Any, path: Path) -> CheckpointError | None:
    """Why building ``architecture`` needs consent (None: it is a trusted network class)."""
    if getattr(architecture, "source", None) is not None:
        return CheckpointError(
            f"{str(path)!r} holds pytorch_state_dict weights whose architecture is a Python file inside the "
            "package; loading it runs that code: pass trust_code=True (CLI --trust-code) if you trust the package")
    try:
        check_architecture(str(getattr(architecture, "import_from", "")), str(architecture.callable), str(path))
    except CheckpointError as exc:
        return exc
    return None


def load_package(path: str | os.PathLike[str], *, device: torch.device, trust_code: bool = False) -> nn.Module:
    """Return the model of a bioimage.io package, in eval mode, with its declarations attached
    (:func:`package_info`; ``seamfree_activation`` for the "auto" activation)."""
    path = Path(path)
    descr = _load_description(path)
    model, kind = _weights(descr, device, trust_code, path)
    halo, spatial = _declared(descr)
    info = PackageInfo(str(descr.name), kind, _normalization(descr), _activation(descr), halo, spatial,
                       _channel_names(descr))
    # nn.Module and ScriptModule both take plain Python attributes
    model.seamfree_package = info  # type: ignore[assignment]
    model.seamfree_activation = info.activation  # type: ignore[assignment]
    model.seamfree_metadata = {"bioimageio": info.to_dict()}  # type: ignore[assignment]
    logger.info("loaded bioimage.io package %s (%s weights)", descr.name, kind)
    return model


def export_bioimageio(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    name: str = "seamfree model",
    weights: tuple[str, ...] = ("pytorch_state_dict", "torchscript"),
    declared_halo: tuple[int, ...] | None = None,
    test_image: np.ndarray | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io package (``.zip``) and return its path.

    The output halo and the input size step are the model's measured receptive field (halo) and network stride;
    the description carries the audit's verdict and its evidence. Input processing is seamfree's default
    (percentiles 1 and 99.8 of each sample), output activation the one seamfree applies. ``pytorch_state_dict``
    weights are written for seamfree models (their architecture is imported from ``seamfree.models``), and
    ``torchscript`` weights (traced) for every model. ``declared_halo`` overrides the halo written (tests).
    """
    _require()
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec

    from seamfree.models.describe import describe_model

    if not 5 <= len(name) <= 128:
        raise ConfigError(f"a bioimage.io model name has 5 to 128 characters, got {name!r}; pass another name")
    info = describe_model(model)
    out = Path(out)
    if out.suffix != ".zip":
        raise ConfigError(f"a bioimage.io package is written as a .zip, got {str(out)!r}; pass OUT.zip")
    halo = declared_halo or info.receptive_field.halo
    axis_names = "zyx"[-info.spatial_dims:]
    sizes = [max(64, 2 * h + 2 * s) // s * s + s for h, s in zip(halo, info.network_stride)]
    rng = np.random.default_rng(0)
    image = test_image if test_image is not None else rng.normal(size=(1, info.in_channels, *sizes))
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [1.0, 99.8], axis=tuple(range(2, image.ndim)), keepdims=True)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        np.save(root / "test_input.npy", image)
        traced = _traced(model, torch.from_numpy(image))
        torch.jit.save(traced, str(root / "weights_torchscript.pt"))
        with torch.inference_mode():
            normalized = ((image - low) / (high - low + 1e-6)).astype(np.float32)
            result = info.select(traced(torch.from_numpy(normalized)))
            result = {"sigmoid": torch.sigmoid, "softmax": lambda t: torch.softmax(t, dim=1)}.get(
                info.activation, lambda t: t)(result)
        np.save(root / "test_output.npy", result.numpy().astype(np.float32))
        space_in = [spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(
            min=max(2 * h + s, s) // s * s + s, step=s)) for a, h, s in zip(axis_names, halo, info.network_stride)]
        inputs = spec.InputTensorDescr(
            id=spec.TensorId("raw"), test_tensor=spec.FileDescr(source=root / "test_input.npy"),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(f"c{i}")
                                                                    for i in range(info.in_channels)]), *space_in],
            preprocessing=[spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
                axes=[spec.AxisId(a) for a in axis_names], min_percentile=1.0, max_percentile=99.8))])
        space_out = [spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), halo=h, size=spec.SizeReference(
            tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(a))) for a, h in zip(axis_names, halo)]
        post: dict[str, list[Any]] = {"sigmoid": [spec.SigmoidDescr()],
                "softmax": [spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel")))]}
        outputs = spec.OutputTensorDescr(
            id=spec.TensorId("prediction"), test_tensor=spec.FileDescr(source=root / "test_output.npy"),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(f"p{i}")
                                                                    for i in range(info.out_channels)]), *space_out],
            postprocessing=post.get(info.activation, []))
        version = spec.Version(torch.__version__.split("+")[0])
        entries: dict[str, Any] = {}
        if "torchscript" in weights:
            entries["torchscript"] = spec.TorchscriptWeightsDescr(source=root / "weights_torchscript.pt",
                                                                  pytorch_version=version)
        config = getattr(model, "config", None)
        if "pytorch_state_dict" in weights and info.kind == "seamfree" and isinstance(config, dict):
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, root / "weights.pt")
            entries["pytorch_state_dict"] = spec.PytorchStateDictWeightsDescr(
                source=root / "weights.pt", pytorch_version=version,
                architecture=spec.ArchitectureFromLibraryDescr(
                    callable=spec.Identifier(type(model).__name__), import_from="seamfree.models",
                    kwargs=dict(config)))
        if not entries:
            raise ConfigError(f"no weights to write: weights={weights} (pytorch_state_dict needs a seamfree model)")
        rf = info.receptive_field
        description = (f"Exported by seamfree. Tiling verdict: {info.verdict} ({info.evidence}). Measured "
                       f"receptive-field radius {list(rf.radius)}, halo {list(rf.halo)}, network stride "
                       f"{list(info.network_stride)}.")
        # no I/O checks: they fetch every URL of the description (the cite entry's page), which needs a network
        # and can hang; the files written here are checked by their hashes
        with ValidationContext(perform_io_checks=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            descr = spec.ModelDescr(
                name=name, description=description, authors=[spec.Author(name="seamfree export")],
                cite=[spec.CiteEntry(text="seamfree: segmentation free of tiling artifacts",
                                     url=spec.HttpUrl("https://pypi.org/project/seamfree/"))],
                license=spec.LicenseId("MIT"), documentation=None, inputs=[inputs], outputs=[outputs],
                weights=spec.WeightsDescr(**entries), tags=["seamfree", f"tiling-{info.verdict}"])
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial.zip")
            save_bioimageio_package(descr, output_path=partial)
        os.replace(partial, out)
    return out


def _traced(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    if isinstance(model, torch.jit.ScriptModule):
        return model
    parameter = next(model.parameters(), None)
    example = example.to(parameter.device if parameter is not None else "cpu")
    with eval_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent control flow
        return torch.jit.trace(model, example, check_trace=False)
