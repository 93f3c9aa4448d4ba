"""``seamfree audit MODEL``: the normalization layers of a model and whether they make predictions depend on the
tile."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seamfree.cli.options import add_model_options, add_trust_code

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the command's subparsers."""
    audit = subparsers.add_parser("audit", help="list the normalization layers of a model and whether they make "
                                "predictions depend on the tile")
    audit.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_code(audit)
    audit.add_argument("--static", action="store_true",
                       help="only the static audit of the layers (no receptive field, no tile probe)")
    add_model_options(audit, activation=False)
    audit.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.layers import audit_norms
    from seamfree.models import describe_model, load_model

    model = load_model(args.model, trust_code=args.trust_code)
    if args.static:
        audit = audit_norms(model)
        info = None
    else:
        info = describe_model(model, spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                              output=args.model_output)
        audit = info.audit
    if args.json:
        document = {**audit.to_dict(), "model": None if info is None else info.to_dict()}
        if info is not None:  # the verdict is the model's (static audit and probe); the static one kept beside it
            document = {**document, "verdict": info.verdict, "static_verdict": audit.verdict}
        print(json.dumps(document, indent=2))
        return 0
    print(f"verdict: {audit.verdict if info is None else info.verdict}")
    if info is not None:
        rf = info.receptive_field
        print(f"evidence: {info.evidence}")
        print(f"model: {info.kind}, {info.spatial_dims}D, {info.in_channels} → {info.out_channels} channel(s), network "
              f"stride {info.network_stride}, receptive-field radius {rf.radius}, halo {rf.halo}"
              + ("" if rf.linearized else " (estimated on the compiled model)"))
        for note in info.notes:
            print(f"note: {note}")
    print(f"static audit: {audit.summary}")
    for layer in audit.layers:
        flag = {True: "DEPENDS ON TILE", False: "ok", None: "unknown"}[layer.tile_dependent]
        print(f"  {layer.name:40s} {layer.type:18s} {layer.statistics:13s} {flag}")
    return 0
