"""The study's pre-registered protocol (``protocol.md`` beside this module, also ``docs/protocol.md``): thresholds,
the side and bound of every claim, the correction for multiple comparisons, and the symmetric verdict rule.

The numbers live in the YAML block of ``protocol.md`` and nowhere else; :func:`protocol` reads them once.

- :func:`group_outcome`: "holds", "fails" or "undecided" for one group's interval against a claim's rule;
- :func:`decide`: one verdict from the outcomes of a claim's groups (mirrored data, mirrored verdict);
- :func:`count_verdict`: the verdict of a claim that counts models satisfying an exact threshold.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from seamfree.errors import ConfigError
from seamfree.study.statistics import Estimate

__all__ = ["Protocol", "Rule", "count_verdict", "decide", "group_outcome", "protocol", "summary"]

SIDES = ("above", "below")


@dataclass(frozen=True)
class Rule:
    """A claim's statement: its quantity lies on ``side`` ("above" or "below") of ``bound``."""

    name: str
    side: str
    bound: float

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ConfigError(f"rule {self.name!r}: side must be one of {SIDES}, got {self.side!r}")

    def words(self) -> str:
        return f"{self.side} {self.bound:g}"


@dataclass(frozen=True)
class Protocol:
    """The protocol's numbers (see ``protocol.md``)."""

    level: float
    correction: str
    min_units: int
    bootstrap_resamples: int
    thresholds: dict[str, float]
    rules: dict[str, Rule]

    def group_level(self, groups: int) -> float:
        """The level of each of ``groups`` intervals of one claim (Bonferroni: 1 − (1 − level) / groups)."""
        if self.correction == "none" or groups <= 1:
            return self.level
        return 1 - (1 - self.level) / groups

    def rule(self, name: str) -> Rule:
        try:
            return self.rules[name]
        except KeyError:
            raise ConfigError(f"the protocol has no rule {name!r}; it has {sorted(self.rules)}") from None


def _text() -> str:
    return resources.files("seamfree.study").joinpath("protocol.md").read_text(encoding="utf-8")


@functools.cache
def protocol() -> Protocol:
    """The protocol of ``protocol.md`` (read once)."""
    blocks = re.findall(r"```yaml\n(.*?)```", _text(), flags=re.S)
    if len(blocks) != 1:
        raise ConfigError(f"protocol.md must hold exactly one ```yaml block of numbers, found {len(blocks)}")
    values: dict[str, Any] = yaml.safe_load(blocks[0])
    if values.get("correction") not in ("bonferroni", "none"):
        raise ConfigError(f"protocol correction must be 'bonferroni' or 'none', got {values.get('correction')!r}")
    rules = {name: Rule(name, str(rule["side"]), float(rule["bound"])) for name, rule in values["rules"].items()}
    return Protocol(float(values["level"]), values["correction"], int(values["min_units"]),
                    int(values["bootstrap_resamples"]),
                    {k: float(v) for k, v in values["thresholds"].items()}, rules)


def group_outcome(estimate: Estimate, rule: Rule, *, min_units: int | None = None) -> str:
    """"holds" when the whole interval lies on the rule's side of its bound, "fails" when it lies wholly on the
    other side, "undecided" otherwise or with fewer than ``min_units`` independent draws (the protocol's)."""
    needed = protocol().min_units if min_units is None else min_units
    if estimate.independent < needed:
        return "undecided"
    above, below = estimate.low > rule.bound, estimate.high < rule.bound
    if rule.side == "below":
        above, below = below, above
    return "holds" if above else "fails" if below else "undecided"


def decide(outcomes: Sequence[str]) -> str:
    """The verdict of a claim from its groups' outcomes: reproduced (holds everywhere), not reproduced (fails
    everywhere), partly (holds somewhere and fails somewhere), inconclusive (otherwise); "not measured" without
    groups. Symmetric: swapping holds and fails swaps reproduced and not reproduced."""
    unknown = set(outcomes) - {"holds", "fails", "undecided"}
    if unknown:
        raise ConfigError(f"unknown group outcomes {sorted(unknown)}")
    if not outcomes:
        return "not measured"
    holds, fails = outcomes.count("holds"), outcomes.count("fails")
    if holds == len(outcomes):
        return "reproduced"
    if fails == len(outcomes):
        return "not reproduced"
    return "partly" if holds and fails else "inconclusive"


def summary(outcomes: Sequence[str]) -> str:
    """``"holds in 2, fails in 1, undecided in 1 of 4 groups"``."""
    return (f"holds in {outcomes.count('holds')}, fails in {outcomes.count('fails')}, undecided in "
            f"{outcomes.count('undecided')} of {len(outcomes)} groups")


def count_verdict(satisfied: int, total: int) -> str:
    """The verdict of a claim on exact quantities: every model satisfies it, none does, or some do."""
    if total == 0:
        return "not measured"
    return "reproduced" if satisfied == total else "not reproduced" if satisfied == 0 else "partly"
