"""The ``seamfree`` commands, one module each with its parser (``add_parser``) and its run (``run``): each run turns
parsed arguments into calls of public library functions (libraries are imported inside ``run``, so that
``seamfree --help`` and a bad option cost no torch import). :data:`COMMANDS` is their order in ``--help``."""

from seamfree.cli.commands import (
    audit,
    convert,
    data,
    demo,
    diagnose,
    export,
    fix,
    predict,
    recalibrate,
    seams,
    segment,
    status,
    study,
    submit,
    train,
)

COMMANDS = (audit, convert, export, predict, segment, submit, status, seams, fix, diagnose, train, recalibrate, demo,
            study, data)

__all__ = ["COMMANDS"]
