"""The weekly directors' report end to end (CONTRACT.md "Output", METRICS.md "Publishing").

One synthetic run (``main_report``: 1,500 episodes, report 2026-W47) and one hand-made run
with markup in ids and labels (``escape_report``) are shared by every test here and in
test_report_browser.py; see report_helpers.py. The Dagster schedule, sensor and partition
tests need no run.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import shutil
import subprocess
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl
import pytest

from report_helpers import (  # noqa: F401  (fixtures are used by name)
    FIGURES, K, RAW_MARKUP, SUNDAY, TODAY, WEEK, XSS_CLINIC_IMG, XSS_CLINIC_SCRIPT, XSS_LABEL, XSS_REFUSED_FILE,
    build_once, count_problem, count_value, escape_report, main_report, parse_report, pdf_text, tree_bytes,
    without_data_uris,
)

from pipelines.reports.audit import published_problems, small_counts
from pipelines.reports.publish import STAT_COLUMNS
from pipelines.reports.weekly import week_bounds, week_label

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS_COLUMNS = [
    "condition", "n_episodes", "n_analysed", "baseline_mean", "final_mean", "mean_change", "mean_change_ci_low",
    "mean_change_ci_high", "median_change", "effect_size_dz", "p_value", "q_value", "responder_30_rate",
    "responder_30_ci_low", "responder_30_ci_high", "responder_50_rate", "responder_50_ci_low", "responder_50_ci_high",
    "median_sessions_to_response", "median_sessions_ci_low", "median_sessions_ci_high", "improved_by_session_3",
    "improved_by_session_6", "improved_by_session_10", "mean_sessions_attended", "adherence",
    "immediate_relief_mean", "suppressed",
]
#: condition-table columns after "Analysed": all statistics
CONDITION_STAT_HEADERS = ["Pain before → after", "Mean fall (points)", "Responders ≥30%", "Responders ≥50%",
                          "Median sessions to respond", "Improved by session 6", "q"]


def read_summary(folder: Path) -> pl.DataFrame:
    return pl.read_csv(folder / "summary.csv", infer_schema=False)


def html_of(folder: Path) -> str:
    return (folder / "report.html").read_text(encoding="utf-8")


def truth_by_condition(run) -> dict[str, dict]:
    """n_episodes / n_analysed per condition and ALL as of the report's Sunday, from the
    processed episode outcomes (computed as of the run's as-of date, which is that Sunday)."""
    assert run.as_of == SUNDAY.isoformat()
    outcomes = pl.read_parquet(run.processed_dir / "episode_outcomes.parquet")
    per = outcomes.group_by("condition").agg(pl.len().alias("n_episodes"), pl.col("analysed").sum().alias("n_analysed"))
    truth = {r["condition"]: r for r in per.iter_rows(named=True)}
    truth["ALL"] = {"condition": "ALL", "n_episodes": outcomes.height, "n_analysed": int(outcomes["analysed"].sum())}
    return truth


# --------------------------------------------------------------------------------------
# The week's folder
# --------------------------------------------------------------------------------------

def test_week_folder_is_complete_and_alone(main_report):
    assert main_report.as_of == "2026-11-22", "the synthetic exports end on Sunday 2026-11-22"
    folder = main_report.folder
    assert main_report.report_paths == [str(folder / "report.html")]
    for name in ("report.html", "report.pdf", "summary.csv"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    figures = sorted(p.stem for p in (folder / "figures").glob("*.png"))
    assert set(figures) == FIGURES and len(figures) == 7, figures
    for png in (folder / "figures").glob("*.png"):
        assert png.read_bytes().startswith(PNG_SIGNATURE), png
    # nothing else in reports/weekly: no staging (".2026-W47.xxxx") or ".old" folder left behind
    assert sorted(p.name for p in main_report.weekly_dir.iterdir()) == [WEEK]
    assert not [p for p in folder.rglob(".*")], "hidden files inside the published folder"
    assert published_problems(folder, K) == []


def test_summary_csv_has_the_metrics_columns(main_report):
    summary = read_summary(main_report.folder)
    assert set(METRICS_COLUMNS) <= set(summary.columns)
    assert summary["condition"].to_list()[-1] == "ALL"
    assert "label" in summary.columns


# --------------------------------------------------------------------------------------
# Self-contained HTML
# --------------------------------------------------------------------------------------

def test_html_is_self_contained(main_report):
    text = html_of(main_report.folder)
    parsed = parse_report(text)
    # every URL-bearing attribute is an inline data: URI (no http://, https://, //, file or relative paths)
    outside = [(tag, attr, value[:60]) for tag, attr, value in parsed.urls
               if not value.strip().lower().startswith("data:")]
    assert not outside, f"references outside the file: {outside}"
    for forbidden in ("script", "link", "iframe", "object", "embed", "base", "frame", "audio", "video", "source"):
        assert forbidden not in parsed.start_tags, f"<{forbidden}> in a self-contained static report"
    stripped = without_data_uris(text)
    assert not re.search(r"(?i)\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", stripped)
    assert not re.search(r"(?i)@import|url\(\s*[\"']?(?!data:)", stripped), "CSS loads something from outside"
    assert not re.search(r"(?i)https?://", stripped), "an absolute URL in the report"
    assert not re.search(r"(?i)http-equiv=[\"']?refresh", stripped)


def test_every_image_is_an_inline_png_matching_the_figure_files(main_report):
    folder = main_report.folder
    parsed = parse_report(html_of(folder))
    assert len(parsed.imgs) == len(FIGURES), [i.get("alt") for i in parsed.imgs]
    decoded = []
    for img in parsed.imgs:
        src = img.get("src") or ""
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:40]
        try:
            data = base64.b64decode(src[len(prefix):], validate=True)
        except binascii.Error as exc:  # pragma: no cover - the assertion message is the point
            raise AssertionError(f"image {img.get('alt')!r} is not valid base64: {exc}") from exc
        assert data.startswith(PNG_SIGNATURE), img.get("alt")
        assert (img.get("alt") or "").strip(), "every chart needs alt text"
        _assert_png_opens(data)
        decoded.append(data)
    files = [p.read_bytes() for p in sorted((folder / "figures").glob("*.png"))]
    assert sorted(decoded) == sorted(files), "the inlined images are not the figures/*.png files"


def _assert_png_opens(data: bytes) -> None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        import matplotlib.image as mpimg

        array = mpimg.imread(io.BytesIO(data), format="png")
        assert array.shape[0] > 100 and array.shape[1] > 100
        return
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.width > 300 and im.height > 150, im.size
        extrema = im.convert("L").getextrema()
        assert extrema[0] < extrema[1], "a blank chart"
        # opaque: the PDF embeds the figures without their alpha channel (render_pdf, mask=None)
        assert im.mode != "RGBA" or im.getchannel("A").getextrema() == (255, 255), "a transparent chart"


# --------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------

def _to_date(parsed) -> dict[str, dict[str, str]]:
    table = parsed.table("Measure")
    return {r["Measure"]: r for r in table.dicts()}


def _assert_pdf_row(lines: list[str], label: str, *values: str) -> None:
    """``label`` on a line of the PDF text, followed (within a few lines) by ``values`` in order."""
    starts = [i for i, line in enumerate(lines) if line.strip() == label]
    assert starts, f"{label!r} not found in the PDF text"
    for i in starts:
        window = [line.strip() for line in lines[i + 1:i + 1 + 2 * len(values) + 2]]
        position, ok = 0, True
        for value in values:
            try:
                position = window.index(value, position) + 1
            except ValueError:
                ok = False
                break
        if ok:
            return
    raise AssertionError(f"PDF row {label!r} does not show {values}: {[lines[i:i + 6] for i in starts]}")


def test_pdf_has_the_headline_numbers_methods_and_provenance(main_report):
    folder = main_report.folder
    pages, text = pdf_text(folder / "report.pdf")
    assert pages >= 5, pages
    lines = text.splitlines()
    rows = _to_date(parse_report(html_of(folder)))
    episodes = rows["Episodes of care"]
    responders = rows["Responders: pain down ≥30%"]
    assert count_value(episodes["Now"]) and count_value(episodes["Now"]) >= 1000, episodes
    assert re.fullmatch(r"\d{1,3}%", responders["Now"]), responders
    _assert_pdf_row(lines, "Episodes of care", episodes["Now"])
    _assert_pdf_row(lines, "Responders: pain down ≥30%", responders["Now"], responders["95% interval"])
    for heading in ("Headline numbers", "Outcomes by condition", "Clinics", "Data quality",
                    "Methods and definitions", "Provenance"):
        assert heading in lines, heading
    assert WEEK in text and "2026-11-16" in text and "2026-11-22" in text


def test_pdf_embeds_every_figure_pixel_for_pixel(main_report):
    import numpy as np
    from PIL import Image
    from pypdf import PdfReader

    figures = {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in (main_report.folder / "figures").glob("*.png")}
    embedded = [np.asarray(image.image.convert("RGB"))
                for page in PdfReader(str(main_report.folder / "report.pdf")).pages for image in page.images]
    assert len(embedded) == len(figures) == len(FIGURES)
    for name, pixels in figures.items():
        assert any(e.shape == pixels.shape and (e == pixels).all() for e in embedded), f"{name} is not in the PDF as drawn"


def test_pdf_streams_setting_is_restored():
    from reportlab import rl_config

    from pipelines.reports import render

    before = rl_config.useA85
    with pytest.raises(RuntimeError):
        with render._binary_streams():
            assert rl_config.useA85 == 0
            raise RuntimeError("a failed build")
    assert rl_config.useA85 == before


def test_pdf_first_page_renders(main_report, tmp_path):
    pdftoppm = shutil.which("pdftoppm")
    if not pdftoppm:
        pytest.skip("pdftoppm (poppler-utils) is not installed; .ci/run installs it")
    out = tmp_path / "page"
    subprocess.run([pdftoppm, "-png", "-r", "50", "-f", "1", "-l", "1", str(main_report.folder / "report.pdf"),
                    str(out)], check=True, timeout=60, capture_output=True)
    pngs = list(tmp_path.glob("page*.png"))
    assert len(pngs) == 1
    from PIL import Image

    with Image.open(pngs[0]) as im:
        extrema = im.convert("L").getextrema()
    assert extrema[0] < 100 < extrema[1], "page 1 of the PDF renders blank"


# --------------------------------------------------------------------------------------
# Privacy (METRICS.md "Publishing")
# --------------------------------------------------------------------------------------

def test_summary_csv_masks_small_counts_and_blanks_their_statistics(main_report):
    summary = read_summary(main_report.folder)
    assert small_counts(summary, K) == []
    truth = truth_by_condition(main_report)
    assert set(summary["condition"]) == set(truth), "one row per condition with an episode, and ALL"
    masked = 0
    for row in summary.iter_rows(named=True):
        real = truth[row["condition"]]
        for column in ("n_episodes", "n_analysed"):
            text = row[column] or ""
            assert count_problem(text) is None, f"{row['condition']}.{column}: {count_problem(text)}"
            value = real[column]
            if 1 <= value < K:
                assert text == f"<{K}", f"{row['condition']}.{column}={value} shown as {text!r}"
                masked += 1
            elif text == "—":
                assert value >= K, f"{row['condition']}.{column}: '—' over a value {value}"
            else:
                assert count_value(text) == value, f"{row['condition']}.{column}: {text!r} != {value}"
        hidden = count_value(row["n_analysed"] or "") is None  # <11 or —: n must not be recoverable
        stats = {c: row[c] for c in STAT_COLUMNS if row.get(c) not in (None, "")}
        if real["n_analysed"] < K or hidden:
            assert not stats, f"{row['condition']}: statistics shown for a hidden or small n: {stats}"
        else:
            assert row["mean_change"] and row["responder_30_rate"], f"{row['condition']}: statistics missing"
        assert row["suppressed"] == ("true" if real["n_analysed"] < K else "false"), row
    assert masked >= 2, "the fixture's seed is chosen to have small conditions; pick another seed"


def _check_count_cells(cells: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: {count_problem(text)}" for where, text in cells if count_problem(text) is not None]


def test_html_tables_mask_small_counts_and_blank_their_statistics(main_report):
    folder = main_report.folder
    parsed = parse_report(html_of(folder))
    summary = {r["label"]: r for r in read_summary(folder).iter_rows(named=True)}
    conditions = parsed.table("Condition")
    clinics = parsed.table("Clinic")
    cells = []
    for row in conditions.dicts():
        name = re.sub(r"\s*\(fewer than .*\)$", "", row["Condition"])
        cells += [(f"condition {name} episodes", row["Episodes"]), (f"condition {name} analysed", row["Analysed"])]
        # the HTML shows what summary.csv publishes
        assert (row["Episodes"], row["Analysed"]) == (summary[name]["n_episodes"], summary[name]["n_analysed"]), name
        if count_value(row["Analysed"]) is None or count_value(row["Analysed"]) < K:
            shown = {h: row[h] for h in CONDITION_STAT_HEADERS if row[h]}
            assert not shown, f"statistics shown for {name} with analysed {row['Analysed']!r}: {shown}"
    for row in clinics.dicts():
        cells.append((f"clinic {row['Clinic']} analysed", row["Analysed"]))
        if count_value(row["Analysed"]) is None or count_value(row["Analysed"]) < K:
            assert not row["Responders ≥30%"] and not row["95% interval"], row
    for card in parsed.cards:
        cells.append((f"card {card['label']}", card["value"]))
        cells.append((f"card {card['label']} previous", card["detail"].removeprefix("previous week:").strip()))
    to_date = _to_date(parsed)
    for label in ("Episodes of care", "Episodes analysed (baseline and follow-up pain)"):
        cells += [(f"{label} now", to_date[label]["Now"]),
                  (f"{label} a week earlier", to_date[label]["A week earlier"])]
    assert _check_count_cells(cells) == []
    assert any(text == f"<{K}" for _, text in cells), "the fixture should exercise masking"


def test_headline_counts_are_consistent(main_report):
    """Episodes of care now - a week earlier = new episodes this week (both shown exactly here)."""
    parsed = parse_report(html_of(main_report.folder))
    cards = {c["label"]: c for c in parsed.cards}
    new = count_value(cards["New episodes of care this week"]["value"])
    episodes = _to_date(parsed)["Episodes of care"]
    now, before = count_value(episodes["Now"]), count_value(episodes["A week earlier"])
    assert None not in (new, now, before)
    assert now - before == new


def test_no_masked_count_can_be_worked_out_from_the_headline_numbers(escape_report):
    """METRICS.md: no masked count can be worked back out of the totals shown beside it.

    This week's new episodes (4, referred in 2026-W47) are masked as <11 on their card, but the
    to-date table beside it shows "Episodes of care" now and a week earlier exactly, and
    now - a week earlier is by definition the week's new episodes."""
    parsed = parse_report(html_of(escape_report.folder))
    cards = {c["label"]: c for c in parsed.cards}
    card = cards["New episodes of care this week"]["value"]
    assert card == f"<{K}", "the hand-made folder has 4 new episodes in the report's week"
    episodes = _to_date(parsed)["Episodes of care"]
    now, before = count_value(episodes["Now"]), count_value(episodes["A week earlier"])
    recovered = None if now is None or before is None else now - before
    assert recovered is None, (
        f"'New episodes of care this week' is masked as {card!r}, but the to-date table shows Episodes of "
        f"care {episodes['Now']} now and {episodes['A week earlier']} a week earlier: {recovered} new episodes")


def test_no_therapist_ids_are_published(main_report):
    folder = main_report.folder
    therapists = set(pl.read_parquet(main_report.processed_dir / "sessions.parquet")["therapist_id"].unique())
    assert therapists and all(re.fullmatch(r"T\d{4}", t) for t in therapists), sorted(therapists)[:5]
    html_text = without_data_uris(html_of(folder))
    _, pdf = pdf_text(folder / "report.pdf")
    csv_text = (folder / "summary.csv").read_text(encoding="utf-8")
    for name, text in (("report.html", html_text), ("report.pdf", pdf), ("summary.csv", csv_text)):
        found = sorted(t for t in therapists if t in text)
        assert not found, f"therapist ids in {name}: {found[:5]}"
        assert not re.search(r"\bT\d{4}\b", text), f"a therapist-like id in {name}"
        assert "therapist_id" not in text, name


# --------------------------------------------------------------------------------------
# Escaping: markup in clinic ids, a vocabulary label and a file name
# --------------------------------------------------------------------------------------

def test_markup_in_ids_labels_and_file_names_is_escaped(escape_report):
    text = html_of(escape_report.folder)
    stripped = without_data_uris(text)
    for raw in RAW_MARKUP:
        assert raw not in stripped, f"unescaped markup in report.html: {raw!r}"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in stripped
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in stripped
    assert "&lt;img src=x onerror=alert(3)&gt;" in stripped
    parsed = parse_report(text)
    assert "script" not in parsed.start_tags
    assert not parsed.handlers, f"event-handler attributes: {parsed.handlers}"
    assert parsed.start_tags.count("img") == len(FIGURES), "an <img> that is not a chart"
    assert not [t for t in parsed.start_tags if t in ("b", "i")], "markup from the data became elements"
    # the text a reader sees is the id and label exactly as exported
    clinics = parsed.table("Clinic").column("Clinic")
    assert XSS_CLINIC_SCRIPT in clinics and XSS_CLINIC_IMG in clinics, clinics
    conditions = parsed.table("Condition").column("Condition")
    assert XSS_LABEL in conditions, conditions
    assert XSS_REFUSED_FILE in parsed.table("Refused file").column("Refused file")


def test_markup_survives_as_text_in_pdf_and_csv(escape_report):
    pages, text = pdf_text(escape_report.folder / "report.pdf")
    flat = " ".join(text.split())
    assert XSS_CLINIC_SCRIPT in flat.replace(" ", "") or XSS_CLINIC_SCRIPT in flat, "clinic id missing from the PDF"
    assert "alert(2)" in flat and "Sciatica" in flat
    summary = read_summary(escape_report.folder)
    assert XSS_LABEL in summary["label"].to_list()


def test_the_markup_clinics_appear_in_the_clinic_table(escape_report):
    """Both markup clinics have 14 analysed episodes; the clinic C3 (4) is masked, so one of
    them is hidden too (complementary) and shows no rate."""
    # CONTRACT rule 2 accepts such ids (no '@', not phone-like): every row of the three exports is accepted
    audit = pl.read_csv(escape_report.processed_dir / "ingest_audit.csv", infer_schema=False)
    ingested = audit.filter(pl.col("status") == "ingested")
    assert ingested.height == 3 and ingested["rejected"].to_list() == ["0", "0", "0"], audit
    assert ingested["accepted"].to_list() == ingested["rows_read"].to_list()
    assert audit.filter(pl.col("status") == "refused")["source_file"].to_list() == [XSS_REFUSED_FILE]
    parsed = parse_report(html_of(escape_report.folder))
    rows = {r["Clinic"]: r for r in parsed.table("Clinic").dicts()}
    assert set(rows) == {XSS_CLINIC_SCRIPT, XSS_CLINIC_IMG, "C3"}
    assert rows["C3"]["Analysed"] == f"<{K}"
    analysed = sorted(rows[c]["Analysed"] for c in (XSS_CLINIC_SCRIPT, XSS_CLINIC_IMG))
    assert analysed == ["14", "—"], analysed
    assert _check_count_cells([(c, r["Analysed"]) for c, r in rows.items()]) == []


# --------------------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------------------

PAST_AS_OF = "2026-10-01"
PAST_WEEK = "2026-W40"


def _build_past_week(folder: Path) -> dict:
    from pipelines.pipeline import run_pipeline

    # the same raw folder as main_report, located through its shared JSON
    main = json.loads((folder.parent / "weekly_report_main.json").read_text())
    outcome = run_pipeline(main["raw_dir"], folder / "processed", folder / "reports", as_of=PAST_AS_OF, today=TODAY,
                           instance=dg.DagsterInstance.ephemeral())
    return {"success": outcome.success, "failure": outcome.failure, "as_of": outcome.as_of,
            "report_paths": [str(p) for p in outcome.report_paths], "reports_dir": str(folder / "reports"),
            "processed_dir": str(folder / "processed")}


@pytest.fixture(scope="module")
def past_week(main_report, tmp_path_factory) -> dict:
    """``run_pipeline(as_of="2026-10-01")`` over main_report's raw folder: the 2026-W40 report."""
    return build_once(tmp_path_factory, "weekly_report_past_week", _build_past_week)


def test_a_past_week_uses_only_data_up_to_its_sunday(main_report, past_week):
    assert past_week["success"], past_week["failure"]
    week = week_label(date.fromisoformat(PAST_AS_OF))
    assert week == PAST_WEEK
    monday, sunday = week_bounds(week)
    weekly = Path(past_week["reports_dir"]) / "weekly"
    folder = weekly / week
    assert past_week["report_paths"] == [str(folder / "report.html")]
    assert sorted(p.name for p in weekly.iterdir()) == [week]

    episodes = pl.read_parquet(main_report.processed_dir / "episodes.parquet")
    assert episodes["referral_date"].max() > sunday, "the data must go on after the past week"
    known = episodes.filter(pl.col("referral_date") <= sunday)
    summary = {r["condition"]: r for r in read_summary(folder).iter_rows(named=True)}
    assert count_value(summary["ALL"]["n_episodes"]) == known.height
    per_condition = dict(known.group_by("condition").len().iter_rows())
    assert set(summary) - {"ALL"} == set(per_condition), "a condition first seen after the week is listed"
    for code, n in per_condition.items():
        shown = summary[code]["n_episodes"]
        if count_value(shown) is not None:
            assert count_value(shown) == n, (code, shown, n)
        else:
            assert shown == (f"<{K}" if n < K else "—"), (code, shown, n)
    text = html_of(folder)
    assert f"figures as of Sunday {sunday.isoformat()}" in text
    assert f"(all episodes referred on or before {sunday.isoformat()})" in text
    assert (folder / "summary.csv").read_bytes() != (main_report.folder / "summary.csv").read_bytes()


def test_rerunning_a_week_gives_the_same_report(main_report, past_week, tmp_path):
    """Materialise the 2026-W40 partition again, on main_report's processed tables (the same
    raw folder, ingested by another run), over a copy of the published folder (so the re-run
    also replaces an existing folder): byte-identical summary.csv, report.html and figures."""
    from pipelines.defs.reports.partitions import first_week
    from pipelines.definitions import make_definitions
    from pipelines.pipeline import run_config
    from pipelines.settings import Settings

    assert past_week["success"], past_week["failure"]
    first = Path(past_week["reports_dir"]) / "weekly" / PAST_WEEK
    reports = tmp_path / "reports"
    shutil.copytree(first, reports / "weekly" / PAST_WEEK)
    settings = Settings()
    config = run_config(main_report.raw_dir, main_report.processed_dir, reports, "", TODAY, settings, None, False)
    defs = make_definitions(settings, start=first_week(main_report.processed_dir))
    monday, _ = week_bounds(PAST_WEEK)
    result = defs.resolve_job_def("weekly_report_job").execute_in_process(
        run_config=config, instance=dg.DagsterInstance.ephemeral(), partition_key=monday.isoformat(),
        asset_selection=[dg.AssetKey("weekly_report")], raise_on_error=False)
    assert result.success
    again = reports / "weekly" / PAST_WEEK
    assert sorted(p.name for p in (reports / "weekly").iterdir()) == [PAST_WEEK], "staging or old folder left"
    assert (again / "summary.csv").read_bytes() == (first / "summary.csv").read_bytes()
    assert html_of(again) == html_of(first), "report.html differs between two runs of the same week"
    assert tree_bytes(again / "figures") == tree_bytes(first / "figures")
    assert pdf_text(again / "report.pdf") == pdf_text(first / "report.pdf")


# --------------------------------------------------------------------------------------
# Atomic publishing
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def markup_content(escape_report):
    """The 2026-W47 ReportContent of the hand-made folder (small, so quick to build)."""
    from pipelines.defs.resources import CSV_SCHEMAS
    from pipelines.io import read_table
    from pipelines.reports.weekly import ReportInputs, build_report
    from pipelines.settings import Settings
    from pipelines.vocabulary import Vocabulary

    p = escape_report.processed_dir
    vocabulary = Vocabulary.load(escape_report.vocabulary_file)
    inputs = ReportInputs(
        episodes=read_table(p / "episodes.parquet"), sessions=read_table(p / "sessions.parquet"),
        pain_scores=read_table(p / "pain_scores.parquet"),
        audit=read_table(p / "ingest_audit.csv", CSV_SCHEMAS["ingest_audit.csv"]),
        rejected=read_table(p / "rejected_rows.csv", CSV_SCHEMAS["rejected_rows.csv"]),
        settings=Settings(), labels=vocabulary.labels, run_date=date.fromisoformat(TODAY),
        vocabulary_fingerprint=vocabulary.fingerprint())
    return build_report(inputs, WEEK)


def test_a_failed_render_leaves_the_published_folder_untouched(escape_report, markup_content, tmp_path,
                                                               monkeypatch):
    from pipelines.reports import render

    weekly = tmp_path / "weekly"
    shutil.copytree(escape_report.folder, weekly / WEEK)
    before = tree_bytes(weekly / WEEK)
    calls = []

    def broken_pdf(content, images, target):
        calls.append(target)
        Path(target).write_bytes(b"%PDF-1.4\n% half a file")  # midway: the HTML and figures are already staged
        raise RuntimeError("disk full while writing the PDF")

    monkeypatch.setattr(render, "render_pdf", broken_pdf)
    with pytest.raises(RuntimeError, match="disk full"):
        render.write_report(markup_content, weekly)
    assert calls, "render_pdf was not called"
    assert Path(calls[0]).parent != weekly / WEEK, "the PDF was written straight into the published folder"
    assert sorted(p.name for p in weekly.iterdir()) == [WEEK], "a staging folder was left behind"
    assert tree_bytes(weekly / WEEK) == before, "the previous week's folder changed"


def test_a_successful_write_replaces_the_folder_atomically(escape_report, markup_content, tmp_path):
    from pipelines.reports.render import write_report

    weekly = tmp_path / "weekly"
    shutil.copytree(escape_report.folder, weekly / WEEK)
    (weekly / WEEK / "stale.txt").write_text("from an earlier run")
    target = write_report(markup_content, weekly)
    assert target == weekly / WEEK
    assert sorted(p.name for p in weekly.iterdir()) == [WEEK]
    assert not (target / "stale.txt").exists(), "the new folder must replace the old one, not merge into it"
    assert {p.name for p in target.iterdir()} == {"report.html", "report.pdf", "summary.csv", "figures"}
    assert {p.stem for p in (target / "figures").glob("*.png")} == FIGURES
    assert (target / "summary.csv").read_bytes() == (escape_report.folder / "summary.csv").read_bytes()


def test_publish_folder_without_renameat2(tmp_path, monkeypatch):
    """Where the atomic exchange is unsupported, the fallback still replaces and cleans up."""
    from pipelines.reports import render

    monkeypatch.setattr(render, "exchange_paths", lambda a, b: False)
    target = tmp_path / WEEK
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = tmp_path / f".{WEEK}.staging"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    render.publish_folder(staging, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEEK]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


# --------------------------------------------------------------------------------------
# Dagster: schedule, sensor, partitions
# --------------------------------------------------------------------------------------

def _defs(timezone: str = "UTC", start: date = date(2026, 1, 5)):
    from pipelines.definitions import make_definitions
    from pipelines.settings import Settings

    return make_definitions(Settings(timezone=timezone), start=start)


def _schedule_partition(timezone: str, when: datetime) -> str:
    defs = _defs(timezone, start=date(2025, 12, 1))
    schedule = defs.resolve_schedule_def("weekly_report_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
    data = schedule.evaluate_tick(context)
    assert len(data.run_requests or []) == 1, data
    request = data.run_requests[0]
    # the key is a partition of the job at the time of the tick
    partitions = defs.resolve_job_def("weekly_report_job").partitions_def
    assert request.partition_key in partitions.get_partition_keys(current_time=when)
    return request.partition_key


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York", "Pacific/Auckland", "Asia/Tokyo"])
@pytest.mark.parametrize("run_day, expected", [
    (date(2026, 11, 30), "2026-11-23"),   # Monday 30 Nov: last week is Mon 23 - Sun 29 Nov (2026-W48)
    (date(2027, 1, 4), "2026-12-28"),     # across the new year: last week is 2026-W53
])
def test_schedule_targets_last_week(timezone, run_day, expected):
    defs = _defs(timezone)
    schedule = defs.resolve_schedule_def("weekly_report_schedule")
    assert schedule.cron_schedule == "0 6 * * 1"
    assert schedule.execution_timezone == timezone
    assert schedule.job_name == "weekly_report_job"
    # the daemon passes the tick in the schedule's time zone: Monday 06:00 local
    when = datetime(run_day.year, run_day.month, run_day.day, 6, 0, tzinfo=ZoneInfo(timezone))
    key = _schedule_partition(timezone, when)
    assert key == expected
    monday, sunday = week_bounds(week_label(date.fromisoformat(key)))
    assert monday.isoformat() == key and sunday == run_day - timedelta(days=1), "last week: complete, just ended"
    assert week_label(date.fromisoformat(expected)) == {"2026-11-23": "2026-W48", "2026-12-28": "2026-W53"}[expected]


def _sensor_tick(sensor, raw: Path, cursor: str | None):
    from pipelines.defs.resources import PipelineConfig

    context = dg.build_sensor_context(cursor=cursor, resources={"paths": PipelineConfig(raw_dir=str(raw))})
    return sensor.evaluate_tick(context)


def test_new_exports_sensor(tmp_path):
    defs = _defs()
    sensor = defs.resolve_sensor_def("new_exports_sensor")
    assert sensor.job_name == "outcomes_job"
    raw = tmp_path / "raw"
    raw.mkdir()
    keys = []

    def tick(cursor, expect_run: bool, expect_files: str | None = None):
        data = _sensor_tick(sensor, raw, cursor)
        runs = data.run_requests or []
        if expect_run:
            assert len(runs) == 1, (data.skip_message, runs)
            keys.append(runs[0].run_key)
            if expect_files is not None:
                assert runs[0].tags.get("new_files") == expect_files, runs[0].tags
        else:
            assert not runs, [r.tags for r in runs]
            assert data.skip_message
        assert data.cursor is not None
        json.loads(data.cursor)
        return data.cursor

    cursor = tick(None, expect_run=False)                               # empty folder
    (raw / "2026-W47").mkdir()
    (raw / "2026-W47" / "episodes_2026-11-22.csv").write_text("episode_id\nE1\n")
    cursor = tick(cursor, expect_run=True, expect_files="2026-W47/episodes_2026-11-22.csv")
    cursor = tick(cursor, expect_run=False)                             # nothing new
    cursor = tick(cursor, expect_run=False)
    (raw / "notes.txt").write_text("not an export")
    (raw / "2026-W47" / "summary.csv").write_text("a,b\n")              # not a table's name
    (raw / "2026-W47" / "episodes_2026-11-22.xlsx").write_bytes(b"PK")  # not CSV/Parquet
    cursor = tick(cursor, expect_run=False)
    (raw / "2026-W47" / "sessions_2026-11-22.csv").write_text("session_id\nS1\n")
    cursor = tick(cursor, expect_run=True, expect_files="2026-W47/sessions_2026-11-22.csv")
    cursor = tick(cursor, expect_run=False)
    changed = raw / "2026-W47" / "episodes_2026-11-22.csv"
    changed.write_text("episode_id\nE1\nE2\n")                          # a corrected export
    cursor = tick(cursor, expect_run=True, expect_files="2026-W47/episodes_2026-11-22.csv")
    cursor = tick(cursor, expect_run=False)
    (raw / "PAIN_SCORES_2026-11-22.CSV").write_text("episode_id\n")      # names match case-insensitively
    cursor = tick(cursor, expect_run=True, expect_files="PAIN_SCORES_2026-11-22.CSV")
    assert len(set(keys)) == len(keys) == 4, f"run keys must differ, or Dagster drops the later runs: {keys}"


def test_sensor_on_a_missing_raw_folder_skips(tmp_path):
    sensor = _defs().resolve_sensor_def("new_exports_sensor")
    data = _sensor_tick(sensor, tmp_path / "does-not-exist", None)
    assert not data.run_requests and data.skip_message


def _weekly_partitions(timezone: str, start: date = date(2026, 1, 5)) -> dg.WeeklyPartitionsDefinition:
    defs = _defs(timezone, start)
    job_partitions = defs.resolve_job_def("weekly_report_job").partitions_def
    asset = defs.resolve_assets_def("weekly_report")
    assert asset.partitions_def == job_partitions
    assert isinstance(job_partitions, dg.WeeklyPartitionsDefinition)
    return job_partitions


def test_partitions_are_mondays_up_to_the_current_week():
    partitions = _weekly_partitions("UTC")
    assert partitions.timezone == "UTC"
    keys = partitions.get_partition_keys(current_time=datetime(2026, 11, 27, 12, 0, tzinfo=ZoneInfo("UTC")))
    assert keys[0] == "2026-01-05"
    assert keys[-1] == "2026-11-23", "the current week (Friday 27 Nov: Monday 23 Nov) is included"
    days = [date.fromisoformat(k) for k in keys]
    assert all(d.weekday() == 0 for d in days)
    assert all(b - a == timedelta(days=7) for a, b in zip(days, days[1:]))
    # without a given time: up to the current week on the real clock (either side of a midnight)
    live = partitions.get_partition_keys()
    now = datetime.now(ZoneInfo("UTC")).date()
    assert live[-1] in {(d - timedelta(days=d.weekday())).isoformat() for d in (now, now - timedelta(days=1))}


@pytest.mark.parametrize("timezone, expected", [
    ("Pacific/Kiritimati", "2026-11-30"),   # UTC+14: already Monday 30 Nov 02:00
    ("Pacific/Pago_Pago", "2026-11-23"),    # UTC-11: still Sunday 29 Nov 01:00
    ("UTC", "2026-11-23"),
])
def test_partitions_follow_the_settings_time_zone(timezone, expected):
    partitions = _weekly_partitions(timezone)
    assert partitions.timezone == timezone
    keys = partitions.get_partition_keys(current_time=datetime(2026, 11, 29, 12, 0, tzinfo=ZoneInfo("UTC")))
    assert keys[-1] == expected
    assert keys[0] == "2026-01-05"
