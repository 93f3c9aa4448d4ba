"""Model modes: run a block with a model in eval mode and give it back as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration of the block and restore its mode afterwards.

    Examples
    --------
    >>> net = nn.Sequential(nn.BatchNorm2d(1)).train()
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training
    True
    """
    if _fixed_mode(model):  # a torch.export program's module: its mode was fixed at export (eval for inference)
        yield model
        return
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _fixed_mode(model: nn.Module) -> bool:
    """Whether the model refuses mode switches (``torch.export``'s modules raise on ``eval()``)."""
    try:
        model.train(model.training)
    except (NotImplementedError, RuntimeError):
        return True
    return False
