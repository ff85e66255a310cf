"""`guie status`: recent competition submissions, with scores, mapped back to what made them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from rich.markup import escape
from rich.table import Table

from guie.kaggle.client import KaggleClient
from guie.kaggle.provenance import Provenance
from guie.params.kaggle import KaggleParams


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


# terminal escape sequences: CSI (colours, clear screen, cursor moves), OSC (window title,
# hyperlinks; ended by BEL or ESC \\), and the other ESC-introduced ones (DCS, PM, APC, single-char)
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[ -/]*[0-~]?",
    re.DOTALL,
)
# what else a terminal acts on: C0 and C1 controls (line breaks become spaces) and the bidi
# overrides that reorder what is shown
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """Server text as plain text to print: escape sequences and control characters removed, line
    breaks and tabs as spaces (Kaggle's descriptions and errors are anyone's text)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text)).replace("\t", " ").replace("\n", " ").strip()


def _row(s, client: KaggleClient) -> SubmissionRow:
    return SubmissionRow(
        ref=s.ref,
        date=s.date,
        status=s.status.name.lower(),
        public_score=_score(s.public_score),
        private_score=_score(s.private_score),
        description=terminal_safe(s.description or ""),
        provenance=Provenance.parse(s.description),
        error=terminal_safe(client.redact(s.error_description or "")),
    )


def fetch_submissions(client: KaggleClient, competition: str, limit: int = 20) -> list[SubmissionRow]:
    """The newest `limit` submissions, following Kaggle's pages (newest first)."""
    from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest
    from kagglesdk.competitions.types.competition_enums import SubmissionGroup, SubmissionSortBy

    rows: list[SubmissionRow] = []
    token = ""
    while len(rows) < limit:
        request = ApiListSubmissionsRequest()
        request.competition_name = competition
        request.group = SubmissionGroup.SUBMISSION_GROUP_ALL
        request.sort_by = SubmissionSortBy.SUBMISSION_SORT_BY_DATE
        request.page_size = min(limit - len(rows), 100)
        request.page_token = token

        response = client.rpc(
            f"list submissions to {competition}",
            lambda kaggle, request=request: kaggle.competitions.competition_api_client.list_submissions(request),
            competition=competition,
        )
        rows += [_row(s, client) for s in response.submissions or [] if s is not None]
        token = response.next_page_token or ""
        if not token or not response.submissions:
            break
    return rows[:limit]


def submissions_of(client: KaggleClient, competition: str, sha256: str, limit: int) -> list[SubmissionRow]:
    """guie's submissions of the artifact with this sha256 among the newest `limit`, newest first."""
    return [
        r
        for r in fetch_submissions(client, competition, limit)
        if r.provenance is not None and r.provenance.sha256 == sha256
    ]


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
            f"[{colours.get(row.status, 'white')}]{row.status}[/]",
            f"{row.public_score:.4f}" if row.public_score is not None else "",
            f"{row.private_score:.4f}" if row.private_score is not None else "",
            prov.commit if prov else "",
            prov.params_hash if prov else "",
            prov.sha256[:12] if prov else escape(f"(not guie) {row.description[:40]}"),
        )
    return table


def error_lines(rows: list[SubmissionRow]) -> list[str]:
    """One line per failed scoring run with Kaggle's errorDescription in full (the kaggle CLI
    never shows it); rich markup in it is escaped."""
    return [
        f"[red]submission {row.ref} failed:[/] {escape(row.error or 'Kaggle gave no reason')}"
        for row in rows
        if row.status == "error"
    ]
