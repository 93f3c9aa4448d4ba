"""``seamfree data list|info|fetch``: the public datasets."""

from __future__ import annotations

import argparse

from seamfree.errors import SeamfreeError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` to the command's subparsers."""
    data = subparsers.add_parser("data", help="public datasets: list, info (source, licence, citation), fetch")
    data.add_argument("action", choices=["list", "info", "fetch"])
    data.add_argument("name", nargs="?", help="dataset name (see `seamfree data list`)")
    data.add_argument("-q", "--quiet", action="store_true")
    data.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.data import datasets

    if args.action == "list":
        for dataset in datasets.DATASETS.values():
            print(f"{dataset.name:16s} {dataset.description}")
        print(f"cache: {datasets.data_root()} (set SEAMFREE_DATA to change it)")
        return 0
    if not args.name:
        raise SeamfreeError(f"seamfree data {args.action} needs a dataset name: {', '.join(datasets.DATASETS)}")
    dataset = datasets.get_dataset(args.name)
    if args.action == "info":
        state = datasets.verify(dataset.name)
        present = "complete" if not any(state.values()) else (f"{len(state['missing'])} missing, "
                                                              f"{len(state['corrupt'])} corrupt file(s)")
        print(f"{dataset.name}: {dataset.description}\nsource:   {dataset.source}\nlicence:  {dataset.licence}\n"
              f"cite:     {dataset.citation}\ntargets:  {', '.join(dataset.targets)}"
              + (f"\nsubsets:  {', '.join(dataset.subsets)}" if dataset.subsets else "")
              + f"\nfiles:    {len(dataset.manifest())} ({present} in {datasets.data_root() / dataset.name})"
              + f"\nsplits:   {datasets.SPLIT_DOCS[dataset.name]}")
        return 0
    path = datasets.fetch(dataset.name, progress=None if args.quiet else
                          (lambda done, total: print(f"\r{done}/{total} files", end="", flush=True)))
    print(f"\n{dataset.name}: every file verified (sha256) in {path}")
    return 0
