"""Fixtures of the plan's tests: fixed loader rates and start-up time, so no verdict depends on a clock."""

from __future__ import annotations

import pytest

from guie.plan.probe import LoaderRates, Measured

FIXED_RATES = LoaderRates(prepare=40.0, views_store=400.0, views_decode=35.0, source="fixed for the test")
STARTUP_S = 5.0


def fixed(sizes) -> Measured:
    return Measured(dict.fromkeys(sizes, FIXED_RATES), STARTUP_S, 0.5, None)


@pytest.fixture
def fixed_measurements(monkeypatch):
    """`guie plan` with this machine's measurements replaced by constants (the CLI path stays real)."""
    import guie.plan.probe as probe
    import guie.plan.run as run

    monkeypatch.setattr(run, "loader_rates", lambda *args, **kwargs: FIXED_RATES)
    monkeypatch.setattr(run, "startup_seconds", lambda imports="": STARTUP_S)
    monkeypatch.setattr(probe, "startup_seconds", lambda imports="": STARTUP_S)
    monkeypatch.setattr(run, "generate_seconds", lambda sources, folder: (10.0, []))
