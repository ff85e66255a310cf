"""`guie verify`'s report: one Check per thing the host would fail, each saying what to fix."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # could not run here (e.g. a CUDA artifact's timing without a GPU); does not fail
    info: bool = False  # information only (a measured time): never fails, whatever it measured
    values: dict[str, float] = field(default_factory=dict)  # measured numbers, for machines


@dataclass
class VerifyReport:
    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" + (f" -> {c.fix}" if c.fix else "") for c in self.checks if not c.passed]

    def add(self, name: str, passed: bool, detail: str, fix: str = "", values: dict[str, float] | None = None) -> bool:
        """A check's outcome (its `fix` kept only when it failed); whether it passed."""
        self.checks.append(Check(name, passed, detail, "" if passed else fix, values=dict(values or {})))
        return passed

    def add_info(self, name: str, detail: str, values: dict[str, float] | None = None, skipped: bool = False) -> None:
        """Information that never fails (a measured time), or with `skipped` what could not run here."""
        self.checks.append(Check(name, True, detail, skipped=skipped, info=True, values=dict(values or {})))

    def to_dict(self) -> dict:
        return {"path": self.path, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"
