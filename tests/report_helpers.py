"""Shared fixtures and helpers for the weekly directors' report tests.

The report tests (``test_report.py``, ``test_report_browser.py``) share two pipeline runs,
each made once per pytest session, even under ``pytest -n 2``: the first xdist worker that
needs a run makes it under a file lock in the session's shared temp folder, and the
others reuse it (the pytest-xdist recipe for session data). Tests treat these folders as
read-only; a test that writes copies first.

- ``main_report``: 1,500 synthetic episodes (fixed seed) whose last day is Sunday
  2026-11-22, run with ``today=2026-11-27``: the report for 2026-W47.
- ``escape_report``: a hand-made raw folder whose clinic ids and a custom vocabulary
  label hold HTML/JS markup, plus a refused file whose name holds markup; also built so
  that a week's new episodes are a small count (the privacy tests use it too).

Import the fixtures into a test module by name (``from report_helpers import main_report``).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

SEED = 4                    # a seed whose W47 has small conditions (parkinsons, multiple_sclerosis)
N_EPISODES = 1500
TODAY = "2026-11-27"        # the run date (a Friday in 2026-W48)
WEEK = "2026-W47"           # the synthetic data end on its Sunday (pipelines.synth default)
MONDAY = date(2026, 11, 16)
SUNDAY = date(2026, 11, 22)
K = 11
FIGURES = {"forest", "improved_by_session", "trajectory", "responders", "funnel", "trend", "data_quality"}

# the hand-made markup folder
XSS_CLINIC_SCRIPT = "<script>alert(1)</script>"
XSS_CLINIC_IMG = 'C1"><img src=x onerror=alert(1)>'
SMALL_CLINIC = "C3"
XSS_ALIAS = "<i>sciatica</i>"
XSS_CODE = "sciatica"
XSS_LABEL = "Sciatica <script>alert(2)</script> & <b>bold</b>"
XSS_REFUSED_FILE = "episodes_<img src=x onerror=alert(3)>.csv"
RAW_MARKUP = [XSS_CLINIC_SCRIPT, XSS_CLINIC_IMG, "<script>alert(2)</script>", "<b>bold</b>",
              "<img src=x onerror=alert(3)>", "<img src=x onerror=alert(1)>", "<i>sciatica</i>"]


# --------------------------------------------------------------------------------------
# Build once per session, across xdist workers
# --------------------------------------------------------------------------------------

def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    # under xdist each worker has basetemp/popen-gwN; the parent is shared by the session
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> dict:
    """Run ``build(folder) -> dict`` once per session; every worker gets its JSON result."""
    from filelock import FileLock

    root = _shared_root(tmp_path_factory)
    folder = root / name
    done = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock"), timeout=600):
        if done.is_file():
            return json.loads(done.read_text())
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        result = build(folder)
        done.write_text(json.dumps(result))
        return result


@dataclass(frozen=True)
class ReportRun:
    raw_dir: Path
    processed_dir: Path
    reports_dir: Path
    vocabulary_file: Path | None
    success: bool
    failure: str
    as_of: str
    report_paths: list[str]

    @property
    def weekly_dir(self) -> Path:
        return self.reports_dir / "weekly"

    @property
    def folder(self) -> Path:
        return self.weekly_dir / WEEK

    @classmethod
    def from_json(cls, data: dict) -> "ReportRun":
        vocab = data.get("vocabulary_file")
        return cls(raw_dir=Path(data["raw_dir"]), processed_dir=Path(data["processed_dir"]),
                   reports_dir=Path(data["reports_dir"]), vocabulary_file=Path(vocab) if vocab else None,
                   success=data["success"], failure=data["failure"], as_of=data["as_of"],
                   report_paths=data["report_paths"])


def _run(folder: Path, raw: Path, vocabulary_file: Path | None = None, **kwargs) -> dict:
    import dagster as dg

    from pipelines.pipeline import run_pipeline

    processed, reports = folder / "processed", folder / "reports"
    # an ephemeral instance: `make test` sets DAGSTER_HOME, and these runs are not the project's
    outcome = run_pipeline(raw, processed, reports, today=TODAY, vocabulary_file=vocabulary_file,
                           instance=dg.DagsterInstance.ephemeral(), **kwargs)
    return {"raw_dir": str(raw), "processed_dir": str(processed), "reports_dir": str(reports),
            "vocabulary_file": str(vocabulary_file) if vocabulary_file else None,
            "success": outcome.success, "failure": outcome.failure, "as_of": outcome.as_of,
            "report_paths": [str(p) for p in outcome.report_paths]}


def _build_main(folder: Path) -> dict:
    from pipelines.synth import generate

    raw = folder / "raw"
    generate(N_EPISODES, SEED, raw)  # default last day: Sunday 2026-11-22
    return _run(folder, raw)


@pytest.fixture(scope="session")
def main_report(tmp_path_factory) -> ReportRun:
    run = ReportRun.from_json(build_once(tmp_path_factory, "weekly_report_main", _build_main))
    assert run.success, f"the pipeline failed on the synthetic data: {run.failure}"
    return run


# --------------------------------------------------------------------------------------
# The hand-made folder with markup in ids, labels and file names
# --------------------------------------------------------------------------------------

def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_markup_raw(raw: Path, vocabulary_file: Path) -> None:
    """Three clinics: two with markup ids (14 analysed episodes each, referred in 2026-W43),
    and ``C3`` with 4 episodes referred in 2026-W47, the report's week (a small count of new
    episodes). Latest record: Friday 2026-11-20, so the default as-of week is 2026-W47."""
    raw.mkdir(parents=True, exist_ok=True)
    from pipelines.vocabulary import DEFAULT_VOCABULARY

    vocab = DEFAULT_VOCABULARY.read_text(encoding="utf-8").rstrip("\n") + "\n"
    vocab += _csv_text(["code", "alias", "label"], [[XSS_CODE, "", XSS_LABEL], [XSS_CODE, XSS_ALIAS, XSS_LABEL]]
                       ).split("\n", 1)[1]
    vocabulary_file.write_text(vocab, encoding="utf-8")

    episodes, sessions, scores = [], [], []
    plan = [(XSS_CLINIC_SCRIPT, "A", XSS_ALIAS, 14, date(2026, 10, 19), (1, 7, 14), "T0101"),
            (XSS_CLINIC_IMG, "B", "Low back pain", 14, date(2026, 10, 19), (1, 7, 14), "T0201"),
            (SMALL_CLINIC, "C", "neck_pain", 4, date(2026, 11, 17), (0, 3), "T0301")]
    for clinic, tag, condition, n, referral, offsets, therapist in plan:
        for i in range(n):
            eid = f"E{tag}{i:02d}"
            episodes.append([eid, f"P{tag}{i:02d}", clinic, condition, referral.isoformat(), "6", "45-59", "F",
                             "chronic"])
            baseline = 6 + i % 3
            drops = [0, 1 + i % 2, 1 + i % 5][: len(offsets)]
            for s, (offset, drop) in enumerate(zip(offsets, drops), start=1):
                sid = f"S{tag}{i:02d}{s}"
                day = referral + timedelta(days=offset)
                sessions.append([sid, eid, therapist, day.isoformat(), "45"])
                pre = baseline - drop
                scores.append([eid, sid, "pre", str(pre), ""])
                scores.append([eid, sid, "post", str(max(pre - 1, 0)), ""])
    (raw / "episodes_2026-11-20.csv").write_text(_csv_text(
        ["episode_id", "patient_id", "clinic_id", "condition", "referral_date", "prescribed_sessions", "age_band",
         "sex", "chronicity"], episodes), encoding="utf-8")
    (raw / "sessions_2026-11-20.csv").write_text(_csv_text(
        ["session_id", "episode_id", "therapist_id", "session_date", "duration_min"], sessions), encoding="utf-8")
    (raw / "pain_scores_2026-11-20.csv").write_text(_csv_text(
        ["episode_id", "session_id", "timepoint", "score", "recorded_on"], scores), encoding="utf-8")
    # refused whole (a direct-identifier column); its name is shown in the data-quality section
    (raw / XSS_REFUSED_FILE).write_text(_csv_text(
        ["episode_id", "patient_id", "clinic_id", "condition", "referral_date", "name"],
        [["EX1", "PX1", "C9", "neck_pain", "2026-11-02", "Jane Doe"]]), encoding="utf-8")


def _build_markup(folder: Path) -> dict:
    raw = folder / "raw"
    vocabulary_file = folder / "conditions_custom.csv"
    write_markup_raw(raw, vocabulary_file)
    return _run(folder, raw, vocabulary_file=vocabulary_file)


@pytest.fixture(scope="session")
def escape_report(tmp_path_factory) -> ReportRun:
    run = ReportRun.from_json(build_once(tmp_path_factory, "weekly_report_markup", _build_markup))
    assert run.success, f"the pipeline failed on the hand-made markup folder: {run.failure}"
    return run


# --------------------------------------------------------------------------------------
# Independent HTML parsing
# --------------------------------------------------------------------------------------

@dataclass
class Table:
    section: str            # id of the <h2> before it
    headers: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        i = self.headers.index(name)
        return [r[i] for r in self.rows]

    def dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.headers, r)) for r in self.rows]


class ReportParser(HTMLParser):
    """Collects tables (header texts, cell texts), headline cards, images, links, scripts,
    event-handler attributes and the visible text of a report."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[Table] = []
        self.cards: list[dict[str, str]] = []
        self.imgs: list[dict[str, str]] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.start_tags: list[str] = []
        self.handlers: list[tuple[str, str]] = []
        self.text_parts: list[str] = []
        self._section = ""
        self._in_h2 = False
        self._table: Table | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_head_row = False
        self._card: dict[str, str] | None = None
        self._card_field: str | None = None
        self._skip = 0  # inside <style>/<script>

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.start_tags.append(tag)
        for name, value in attrs:
            if name.lower().startswith("on"):
                self.handlers.append((tag, name))
            if name.lower() in ("src", "href", "action", "data", "poster", "srcset", "formaction", "background",
                                "xlink:href") and value is not None:
                self.urls.append((tag, name.lower(), value))
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "h2":
            self._section = a.get("id", "")
        elif tag == "table":
            self._table = Table(self._section, [], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "div":
            cls = (a.get("class") or "").split()
            if "card" in cls:
                self._card = {}
            elif self._card is not None and cls and cls[0] in ("label", "value", "detail"):
                self._card_field = cls[0]
                self._card[self._card_field] = ""

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
            if tag == "th":
                self._in_head_row = True
        elif tag == "tr" and self._row is not None and self._table is not None:
            if self._in_head_row and not self._table.headers:
                self._table.headers = self._row
            else:
                self._table.rows.append(self._row)
            self._row, self._in_head_row = None, False
        elif tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None
        elif tag == "div":
            if self._card_field is not None:
                self._card_field = None
            elif self._card is not None:
                self.cards.append({k: " ".join(v.split()) for k, v in self._card.items()})
                self._card = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text_parts.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._card is not None and self._card_field is not None:
            self._card[self._card_field] += data

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())

    def table(self, first_header: str) -> Table:
        found = [t for t in self.tables if t.headers and t.headers[0] == first_header]
        assert len(found) == 1, f"expected one table headed {first_header!r}, found {len(found)}"
        return found[0]


def parse_report(html_text: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(html_text)
    parser.close()
    return parser


DATA_URI = re.compile(r"data:[^\"'\s)]*")


def without_data_uris(text: str) -> str:
    """The HTML with inlined images cut out (so base64 cannot match an id by chance)."""
    return DATA_URI.sub("data:", text)


COUNT_TEXT = re.compile(r"^(<(?P<k>\d+)|—|\d{1,3}(,\d{3})*)$")


def count_problem(text: str, k: int = K) -> str | None:
    """Why a published count cell is not allowed (None when it is): counts show as <k, —, 0 or >= k."""
    m = COUNT_TEXT.match(text)
    if not m:
        return f"{text!r} is not a count"
    if m.group("k") is not None:
        return None if int(m.group("k")) == k else f"{text!r} masks with the wrong k"
    if text == "—":
        return None
    value = int(text.replace(",", ""))
    return None if value == 0 or value >= k else f"{text!r} shows a count from 1 to {k - 1}"


def count_value(text: str) -> int | None:
    """The number a count cell shows, None when masked."""
    return int(text.replace(",", "")) if re.fullmatch(r"\d{1,3}(,\d{3})*", text) else None


def pdf_text(path: Path) -> tuple[int, str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    return len(reader.pages), "\n".join(page.extract_text() or "" for page in reader.pages)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def unescape(text: str) -> str:
    return html.unescape(text)
