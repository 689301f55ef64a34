"""Decision gates (phases 9 and 10): parts with their value, threshold, control, chance and power."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class GatePart(NamedTuple):
    """One condition of a gate. `value`, `threshold`, `null_p95`, `mde` and the intervals are in the
    unit the message names.

    control: what the value is measured against; n: trades (or trades judged) behind it;
    p_value: the part's test p-value where it has one; null_percentile / null_p95: where the value
    lies among gains of chance of the same size (0..100) and that null's 95th percentile; mde: the
    smallest true effect found with 80% power at this n; ci_*: 95% bootstrap interval by cluster
    (dependence-aware) and by independent trade.
    """

    name: str
    passed: bool
    value: float | None
    threshold: float
    message: str
    control: str = ""
    n: int | None = None
    p_value: float | None = None
    null_percentile: float | None = None
    null_p95: float | None = None
    mde: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_low_independent: float | None = None
    ci_high_independent: float | None = None


@dataclass(frozen=True)
class GateResult:
    """A decision gate: passed only if every part passed; `message` names each failing part."""

    gate: str
    passed: bool
    parts: list[GatePart]

    @property
    def failed_parts(self) -> list[GatePart]:
        return [p for p in self.parts if not p.passed]

    @property
    def message(self) -> str:
        head = f"{self.gate}: {'PASSED' if self.passed else 'FAILED'}"
        return "\n".join([head] + [f"  - [{'ok' if p.passed else 'FAIL'}] {p.name}: {p.message}"
                                   for p in self.parts])

    def as_dict(self) -> dict:
        return {"gate": self.gate, "passed": self.passed, "parts": [p._asdict() for p in self.parts]}


def make_gate(gate: str, parts: list[GatePart]) -> GateResult:
    return GateResult(gate=gate, passed=all(p.passed for p in parts), parts=parts)


def power_text(mde: float | None, failed: bool, fmt: str, unit: str = "") -> str:
    """'; MDE (80% power) X' and, for a failed part, what its FAIL rules out."""
    if mde is None:
        return ""
    u = f" {unit}" if unit else ""
    if failed:
        return f"; no effect larger than {mde:{fmt}}{u} is likely to have been missed (MDE at 80% power)"
    return f"; MDE at 80% power {mde:{fmt}}{u}"
