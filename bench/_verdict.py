"""The one verdict line every benchmark ends with, and its exit status: `make bench` is green only when each
benchmark measured and met its targets. Not a benchmark itself (make bench skips files starting with _)."""

from __future__ import annotations

MET, MISSED, UNMEASURED = 0, 1, 2


class Targets:
    """Collects (what, measured, target, met) checks; verdict() prints them and returns the exit status."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checks: list[tuple[str, bool]] = []

    def check(self, what: str, met: bool) -> bool:
        self.checks.append((what, met))
        return met

    def at_least(self, what: str, value: float, target: float, unit: str = "") -> bool:
        return self.check(f"{what} {value:.2f}{unit} >= {target:g}{unit}", value >= target)

    def at_most(self, what: str, value: float, target: float, unit: str = "") -> bool:
        return self.check(f"{what} {value:.2f}{unit} <= {target:g}{unit}", value <= target)

    def verdict(self) -> int:
        if not self.checks:
            return cannot_measure(self.name, "no target was checked")
        missed = [what for what, met in self.checks if not met]
        if missed:
            print(f"VERDICT {self.name}: MISSED {len(missed)} of {len(self.checks)} targets: " + "; ".join(missed))
            return MISSED
        print(f"VERDICT {self.name}: MET all {len(self.checks)} targets: " + "; ".join(w for w, _ in self.checks))
        return MET


def cannot_measure(name: str, why: str) -> int:
    print(f"VERDICT {name}: COULD NOT MEASURE: {why}")
    return UNMEASURED
