"""Consent for code that travels with a model: what runs without ``trust_code`` and what needs it.

A model file is data until it asks to run code. seamfree runs code from a model file only with the user's
consent (``trust_code=True``, CLI ``--trust-code``), and says which file asked and why:

- a bioimage.io ``pytorch_state_dict`` architecture imported from an installed library runs that library's
  constructor with the package's arguments: without consent only the exact ``(module, callable)`` pairs of
  :data:`TRUSTED_ARCHITECTURES` (seamfree's own models and the named network classes of MONAI,
  segmentation_models_pytorch and torch-em), never ``subprocess.run`` or ``os.system``;
- an architecture shipped as a Python file inside the package, a ``torch.export`` program and a pickled
  ``nn.Module`` always run code from the file;
- TorchScript is code too (``__setstate__`` runs at load, ``forward`` at prediction). Its archive is checked
  statically before ``torch.jit.load``: no custom ``__setstate__`` and no operator that reaches files, memory
  maps, processes or libraries outside ``aten``/``prim``. A TorchScript file that fails the check loads only with
  consent.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

from seamfree.errors import CheckpointError

__all__ = ["TRUSTED_ARCHITECTURES", "check_architecture", "check_torchscript", "is_torchscript_archive"]

#: ``(import_from, callable)`` pairs a bioimage.io package may name without consent: network classes whose
#: constructors only build layers.
TRUSTED_ARCHITECTURES: frozenset[tuple[str, str]] = frozenset(
    [("seamfree.models", name) for name in ("UNet", "ViTSegmenter")]
    + [("seamfree.models.unet", "UNet"), ("seamfree.models.vit", "ViTSegmenter")]
    + [("monai.networks.nets", name) for name in ("UNet", "BasicUNet", "BasicUNetPlusPlus", "AttentionUnet",
                                                  "DynUNet", "SegResNet", "SwinUNETR", "UNETR", "FlexibleUNet")]
    + [("segmentation_models_pytorch", name) for name in ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3",
                                                          "DeepLabV3Plus", "Linknet", "PSPNet", "PAN", "MAnet")]
    + [("torch_em.model", name) for name in ("UNet2d", "UNet3d", "AnisotropicUNet")]
    + [("torch_em.model.unet", name) for name in ("UNet2d", "UNet3d", "AnisotropicUNet")]
)

_CONSENT = "pass trust_code=True (CLI --trust-code) only if you trust whoever wrote the file"


def check_architecture(import_from: str, callable_name: str, source: str) -> None:
    """CheckpointError unless ``import_from.callable_name`` is a trusted architecture (see the module doc)."""
    if (import_from, callable_name) not in TRUSTED_ARCHITECTURES:
        raise CheckpointError(
            f"{source!r} builds its architecture by calling {import_from}.{callable_name}, which is not one of the "
            "network classes seamfree calls without consent (seamfree.models, monai.networks.nets, "
            f"segmentation_models_pytorch, torch_em.model); calling it runs that code: {_CONSENT}")


# Operators a TorchScript program needs none of to segment an image: files, shared memory, processes, foreign
# operator libraries, pickling and threads. Matched as whole words in the archive's code.
_FORBIDDEN = re.compile(
    r"\b(from_file|_save|save|load|_load_for_mobile|open|system|popen|exec|eval|_shm|share_memory_|"
    r"_share_filename_|_new_shared_filename|_new_shared|fork|wait|_pickle_save|_pickle_load|dlopen)\s*\(")
_FOREIGN_OPS = re.compile(r"\bops\.(?!aten\.|prim\.|quantized\.|_caffe2\.)(\w+)")
_SETSTATE = re.compile(r"\bdef\s+__setstate__\s*\(")


def is_torchscript_archive(data: bytes | Path) -> bool:
    """Whether ``data`` (bytes or a file) is a TorchScript zip archive (it holds ``code/`` and ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


def check_torchscript(data: bytes | Path, source: str, *, limit: int = 64 * 2**20) -> None:
    """CheckpointError if the TorchScript archive ``data`` holds code that runs at load or reaches the system.

    Reads only the archive's ``code/`` members (each at most ``limit`` bytes, checked before inflating).
    """
    findings: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as archive:
            for info in archive.infolist():
                if "/code/" not in info.filename or not info.filename.endswith(".py"):
                    continue
                if info.file_size > limit:
                    raise CheckpointError(f"{source!r}: TorchScript code member {info.filename!r} claims "
                                          f"{info.file_size} bytes (limit {limit}); the file is not a model")
                text = archive.read(info).decode("utf-8", "replace")
                name = info.filename.split("/code/", 1)[1]
                if _SETSTATE.search(text):
                    findings.append(f"a custom __setstate__ in {name} (runs at load)")
                findings += [f"{m.group(1)}() in {name}" for m in _FORBIDDEN.finditer(text)]
                findings += [f"operator library {m.group(1)!r} in {name}" for m in _FOREIGN_OPS.finditer(text)]
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{source!r} is not a readable TorchScript archive: {exc}") from exc
    if findings:
        unique = list(dict.fromkeys(findings))
        raise CheckpointError(
            f"{source!r} is TorchScript whose code does more than compute: {'; '.join(unique[:4])}"
            f"{' ...' if len(unique) > 4 else ''}; loading it runs that code: {_CONSENT}")
