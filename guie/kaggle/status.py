"""`guie status`: recent competition submissions, with scores, mapped back to what made them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.table import Table

from guie.kaggle.client import KaggleClient
from guie.kaggle.provenance import Provenance
from guie.kaggle.settings import KaggleParams


@dataclass(frozen=True)
class SubmissionRow:
    ref: int
    date: datetime | None
    status: str  # pending, complete or error
    public_score: float | None
    private_score: float | None
    description: str
    provenance: Provenance | None  # None for submissions not made by guie
    error: str = ""


def _score(text: str | None) -> float | None:
    # The API returns scores as strings, empty while scoring.
    try:
        return float(text) if text else None
    except ValueError:
        return None


def fetch_submissions(client: KaggleClient, competition: str, limit: int = 20) -> list[SubmissionRow]:
    submissions = client.call(
        f"list submissions to {competition}",
        lambda: client.api.competition_submissions(competition, page_size=limit),
        competition=competition,
    )
    rows = []
    for s in (submissions or [])[:limit]:
        rows.append(
            SubmissionRow(
                ref=s.ref,
                date=s.date,
                status=s.status.name.lower(),
                public_score=_score(s.public_score),
                private_score=_score(s.private_score),
                description=s.description or "",
                provenance=Provenance.parse(s.description),
                error=s.error_description or "",
            )
        )
    return rows


def recent_submissions(
    params: KaggleParams, *, limit: int = 20, client: KaggleClient | None = None
) -> list[SubmissionRow]:
    """The newest `limit` submissions to `params.competition`, newest first."""
    return fetch_submissions(client or KaggleClient(params), params.competition, limit)


def submissions_table(rows: list[SubmissionRow], title: str = "Recent submissions") -> Table:
    table = Table(title=title)
    for name, justify in [
        ("ref", "right"),
        ("date", "left"),
        ("status", "left"),
        ("public", "right"),
        ("private", "right"),
        ("commit", "left"),
        ("params", "left"),
        ("artifact sha256", "left"),
    ]:
        table.add_column(name, justify=justify)
    colours = {"complete": "green", "error": "red", "pending": "yellow"}
    for row in rows:
        prov = row.provenance
        table.add_row(
            str(row.ref),
            row.date.strftime("%Y-%m-%d %H:%M") if row.date else "",
            f"[{colours.get(row.status, 'white')}]{row.status}[/]" + (f" ({row.error})" if row.error else ""),
            f"{row.public_score:.4f}" if row.public_score is not None else "",
            f"{row.private_score:.4f}" if row.private_score is not None else "",
            prov.commit if prov else "",
            prov.params_hash if prov else "",
            prov.sha256[:12] if prov else f"(not guie) {row.description[:40]}",
        )
    return table
