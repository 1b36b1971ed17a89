"""Turn a :class:`ReportContent` into the published week folder (CONTRACT.md "Output").

``reports/weekly/<ISO week>/`` holds ``report.html`` (self-contained: images inlined, no
network), ``report.pdf``, ``summary.csv`` (the published table) and ``figures/*.png``.
The folder is written beside its target and swapped in with one atomic rename, so a
reader sees last week's complete folder or this week's, never half of one.
"""

from __future__ import annotations

import base64
import ctypes
import gc
import io
import os
import pickle
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from pipelines.io import exchange_paths
from pipelines.reports.charts import figure_to_png_bytes, prepare_png_rendering
from pipelines.reports.methods import methods_paragraphs
from pipelines.reports.weekly import FigureItem, ReportContent


# --------------------------------------------------------------------------------------
# Figures to PNG, on two cores
# --------------------------------------------------------------------------------------

#: ``OUTCOMES_RENDER_PROCESSES=1`` draws every figure in this process (no helper process)
RENDER_PROCESSES_ENV = "OUTCOMES_RENDER_PROCESSES"
#: how long to wait for the helper beyond the time this process took for its own share
HELPER_GRACE_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


def render_figures(figures: list[FigureItem]) -> dict[str, bytes]:
    """PNG bytes of each figure (:func:`figure_to_png_bytes`), keyed by name, in order.

    Drawing a chart is pure CPU work in matplotlib (layout, text, Agg) and takes about
    half a second each, so on a machine with two or more cores one forked helper process
    draws part of the figures while this process draws the rest. Both take the next figure
    from a shared queue (largest first), so neither waits for the other for long. The
    helper inherits the figures (fork: nothing is pickled but the PNG bytes coming back),
    writes no file, and dies with this process (``PR_SET_PDEATHSIG``); it is killed and
    reaped before this function returns or raises. If the helper cannot start, fails, or
    is silent for too long, this process draws what is missing itself, so the result is the
    same in every case, just slower. Set ``OUTCOMES_RENDER_PROCESSES=1`` to never fork.
    """
    figures = list(figures)
    images: dict[int, bytes] = {}
    if _use_helper(len(figures)):
        images = _render_with_helper(figures)
    for i, item in enumerate(figures):  # everything when alone; what the helper did not deliver
        if i not in images:
            images[i] = figure_to_png_bytes(item.figure)
    return {figures[i].name: images[i] for i in range(len(figures))}


def _use_helper(n_figures: int) -> bool:
    if n_figures < 2 or n_figures > 255 or not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    setting = os.environ.get(RENDER_PROCESSES_ENV, "").strip()
    if setting:
        return setting != "1" and setting != "0"
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) >= 2


def _render_cost(item: FigureItem) -> int:
    """Drawing time grows with the number of panels (the Kaplan-Meier grid is the slowest)."""
    return len(item.figure.axes)


def _take(queue_fd: int) -> int | None:
    """The next figure index from the shared queue, None when it is empty."""
    try:
        data = os.read(queue_fd, 1)
    except BlockingIOError:
        return None
    return data[0] if data else None


def _render_with_helper(figures: list[FigureItem]) -> dict[int, bytes]:
    """Images drawn here and by a forked helper; indices missing from the result are left to the caller."""
    order = sorted(range(len(figures)), key=lambda i: -_render_cost(figures[i]))
    prepare_png_rendering()  # imports done once, before the fork, not in each process
    fds: list[int] = []
    pid = 0
    frozen = False
    try:
        queue_r, queue_w = os.pipe()
        fds += [queue_r, queue_w]
        result_r, result_w = os.pipe()
        fds += [result_r, result_w]
        os.write(queue_w, bytes(order))  # at most 255 bytes: fits the pipe buffer, all queued before the fork
        os.close(queue_w)
        fds.remove(queue_w)
        os.set_blocking(queue_r, False)  # an empty queue reads as "no more work", never blocks
        parent = os.getpid()
        # objects existing now are left out of this process's collections until the helper is
        # done: a collection writes to every object it visits, which would copy the memory
        # pages the two processes still share (gc.freeze's documented use before a fork)
        frozen = gc.get_freeze_count() == 0  # (never thaw what someone else froze)
        if frozen:
            gc.freeze()
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a threaded process may deadlock the child; the
            # helper only draws figures, and one that hangs is given up on (_receive's timeout)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:  # no pipe or no fork (out of processes or memory): the caller draws everything
        for fd in fds:
            os.close(fd)
        if frozen:
            gc.unfreeze()
        return {}
    if pid == 0:  # the helper: never returns
        _helper_main(figures, queue_r, result_w, result_r, parent)
    try:
        os.close(result_w)
        fds.remove(result_w)
        started = time.monotonic()
        images: dict[int, bytes] = {}
        while (i := _take(queue_r)) is not None:
            images[i] = figure_to_png_bytes(figures[i].figure)
        own_share = time.monotonic() - started
        delivered, caught = _receive(result_r, timeout=HELPER_GRACE_SECONDS + 4 * own_share)
        for message, category, filename, lineno in caught:  # what drawing in the helper warned about
            warnings.warn_explicit(message, category, filename, lineno)
        images.update(delivered)
        return images
    finally:
        if pid > 0:
            _reap(pid)
        for fd in fds:
            os.close(fd)
        if frozen:
            gc.unfreeze()


def _reap(pid: int) -> None:
    """Kill the helper if it still runs and collect its exit status (no zombie, no orphan)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _receive(fd: int, timeout: float) -> tuple[dict[int, bytes], list]:
    """The helper's (images, warnings): a length-prefixed pickle. Nothing if it died or timed out."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    received = 0
    expected = None
    while expected is None or received < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return {}, []
        chunk = os.read(fd, 1 << 20)
        if not chunk:  # the helper ended without a complete answer
            return {}, []
        chunks.append(chunk)
        received += len(chunk)
        if expected is None and received >= 8:
            data = b"".join(chunks)
            expected = 8 + struct.unpack("<Q", data[:8])[0]
            chunks, received = [data], len(data)
    try:
        images, caught = pickle.loads(b"".join(chunks)[8:expected])
    except Exception:  # noqa: BLE001 - a garbled answer counts as none
        return {}, []
    return images, caught


def _helper_main(figures: list[FigureItem], queue_fd: int, result_fd: int, unused_fd: int, parent: int) -> None:
    """Body of the forked helper: draw figures from the queue, send the PNGs back, exit."""
    status = 1
    try:
        os.close(unused_fd)
        _die_with_parent(parent)
        # the run's handlers (SIGTERM -> KeyboardInterrupt, cleanup) belong to the parent
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        gc.disable()  # short-lived: a collection would only touch (and copy) the parent's memory
        images: dict[int, bytes] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                while (i := _take(queue_fd)) is not None:
                    images[i] = figure_to_png_bytes(figures[i].figure)
            except Exception:  # noqa: BLE001 - the parent draws what is missing and sees the error itself
                pass
        warned = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
        try:
            payload = pickle.dumps((images, warned), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable warning category
            payload = pickle.dumps((images, []), protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(struct.pack("<Q", len(payload)) + payload)
        while view:
            written = os.write(result_fd, view)
            view = view[written:]
        status = 0
    except BaseException:  # noqa: BLE001 - whatever happens, leave through os._exit below
        pass
    finally:
        # no atexit handlers, no flushing of the parent's inherited buffers, no cleanup of its files
        os._exit(status)


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the parent dies (Linux); exit now if it already has."""
    try:
        # the symbols of the running program, libc's among them (no ldconfig subprocess to find it)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def render_html(content: ReportContent, images: dict[str, bytes]) -> str:
    env = Environment(loader=PackageLoader("pipelines.reports", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=False)
    template = env.get_template("report.html.j2")
    encoded = {name: base64.b64encode(data).decode("ascii") for name, data in images.items()}
    return template.render(c=content, images=encoded, methods=methods_paragraphs(content.settings))


def render_pdf(content: ReportContent, images: dict[str, bytes], target: Path) -> None:
    """A4 PDF with the same sections as the HTML (reportlab)."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import (Image, KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table,
                                    TableStyle)

    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["BodyText"], fontName="Helvetica", fontSize=9.5, leading=12.5)
    small = ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5)
    cell = ParagraphStyle("cell", parent=body, fontSize=7.5, leading=9)
    h1 = ParagraphStyle("h1", parent=styles["Heading1"], fontName="Helvetica-Bold", fontSize=17, spaceAfter=4)
    h2 = ParagraphStyle("h2", parent=styles["Heading2"], fontName="Helvetica-Bold", fontSize=13, spaceBefore=10)
    caption = ParagraphStyle("caption", parent=body, fontSize=9, leading=11.5, spaceAfter=10)

    def p(text: str, style=body) -> Paragraph:
        return Paragraph(escape(str(text)), style)

    bold_cell = ParagraphStyle("bold_cell", parent=cell, fontName="Helvetica-Bold")

    def table(rows: list[list[str]], widths=None, header=True, bold_last=False) -> Table:
        data = [[p(c, bold_cell if bold_last and i == len(rows) - 1 else cell) for c in row]
                for i, row in enumerate(rows)]
        t = Table(data, colWidths=widths, repeatRows=1 if header else 0)
        style = [("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#cccccc")),
                 ("VALIGN", (0, 0), (-1, -1), "TOP"),
                 ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3)]
        if header:
            style.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f3f6")))
        t.setStyle(TableStyle(style))
        return t

    def figure(name: str, caption_text: str) -> KeepTogether:
        # mask=None: the figures are opaque (saved on white), so their alpha channel adds nothing
        # but a second, all-white image (a soft mask) per figure to compress and embed
        img = Image(io.BytesIO(images[name]), mask=None)
        scale = (17.5 * cm) / img.imageWidth
        img.drawWidth, img.drawHeight = img.imageWidth * scale, img.imageHeight * scale
        if img.drawHeight > 22 * cm:
            shrink = (22 * cm) / img.drawHeight
            img.drawWidth, img.drawHeight = img.drawWidth * shrink, img.drawHeight * shrink
        return KeepTogether([img, Spacer(1, 3), p(caption_text, caption)])

    k = content.settings.min_cell_size
    story: list = [
        p("Medical massage outcomes: weekly report", h1),
        p(f"Week {content.week}: {content.monday.isoformat()} to {content.sunday.isoformat()}; "
          f"figures as of Sunday {content.sunday.isoformat()}."),
        Spacer(1, 6),
    ]
    for message in content.key_messages:
        story.append(p(f"• {message}"))
    story += [p("Headline numbers", h2),
              table([["This week", "Now", "Previous week"]]
                    + [[h["label"], h["this_week"], h["last_week"]] for h in content.headline_week],
                    widths=[7 * cm, 3 * cm, 4 * cm, 3 * cm][:1] + [3 * cm, 7 * cm]),
              Spacer(1, 6),
              table([["To date", "Now", "95% interval", "A week earlier"]]
                    + [[r["label"], r["value"], r["interval"], r["last_week"]] for r in content.headline_to_date],
                    widths=[7 * cm, 3 * cm, 4 * cm, 3 * cm]),
              p("Outcomes by condition", h2),
              p(f"Conditions with fewer than {k} analysed patients are not reported (counts shown as <{k}; "
                "'—' hides a count that would give a small one away). Intervals are 95%.", small)]
    cols = ["condition", "episodes", "analysed", "pain_before_after", "mean_change", "responders_30",
            "responders_50", "median_sessions", "improved_by_6", "q_value"]
    heads = ["Condition", "Episodes", "Analysed", "Pain before → after", "Mean fall (points)", "Responders ≥30%",
             "Responders ≥50%", "Median sessions", "By session 6", "q"]
    def condition_cell(r: dict) -> str:
        return f"{r['condition']} ({r['note']})" if r["note"] else r["condition"]

    rows = [heads] + [[condition_cell(r)] + [r[c] for c in cols[1:]] for r in content.conditions.iter_rows(named=True)]
    story.append(table(rows, widths=[2.9 * cm, 1.3 * cm, 1.3 * cm, 1.8 * cm, 2.2 * cm, 2.0 * cm, 2.0 * cm,
                                     1.6 * cm, 1.2 * cm, 1.1 * cm], bold_last=True))
    for f in content.figures:
        if f.name in ("funnel", "data_quality"):
            continue
        story.append(figure(f.name, f.caption))
    story += [PageBreak(), p("Clinics", h2),
              p("Each clinic's responder rate against the pooled rate with the range expected from chance "
                "(funnel plot). Clinics are listed by id, never ranked; no therapist-level figures.", small)]
    for f in content.figures:
        if f.name == "funnel":
            story.append(figure(f.name, f.caption))
    story.append(table([["Clinic", "Analysed", "Responders ≥30%", "95% interval", "Compared with pooled rate"]]
                       + [[r["clinic_id"], r["analysed"], r["responder_30"], r["interval"], r["position"]]
                          for r in content.clinics.iter_rows(named=True)],
                       widths=[3 * cm, 2.2 * cm, 3 * cm, 3 * cm, 6 * cm]))
    q = content.quality
    story += [p("Data quality", h2),
              p(f"Export files: {q['files']['ingested']} read, {q['files']['refused']} refused, "
                f"{q['files']['ignored']} ignored. Rows: {q['rows']['rows_read']} read = {q['rows']['accepted']} "
                f"accepted + {q['rows']['duplicate']} duplicates + {q['rows']['superseded']} superseded + "
                f"{q['rows']['rejected']} rejected.")]
    for f in content.figures:
        if f.name == "data_quality":
            story.append(figure(f.name, f.caption))
    if q["refused"]:
        story.append(table([["Refused file", "Reason"]] + [[r["source_file"], r["reason"]] for r in q["refused"]],
                           widths=[6 * cm, 11 * cm]))
    story += [p("Methods and definitions", h2)] + [p(t) for t in methods_paragraphs(content.settings)]
    story += [p("Provenance", h2),
              table([[key, value] for key, value in content.provenance.items()], widths=[4 * cm, 13 * cm],
                    header=False)]

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#666666"))
        canvas.drawString(1.8 * cm, 1.0 * cm, f"Medical massage outcomes, week {content.week}")
        canvas.drawRightString(A4[0] - 1.8 * cm, 1.0 * cm, f"page {doc.page}")
        canvas.restoreState()

    doc = SimpleDocTemplate(str(target), pagesize=A4, leftMargin=1.8 * cm, rightMargin=1.8 * cm,
                            topMargin=1.6 * cm, bottomMargin=1.6 * cm,
                            title=f"Medical massage outcomes, week {content.week}", author="pipelines",
                            subject="Weekly outcomes report")
    with _binary_streams():
        doc.build(story, onFirstPage=footer, onLaterPages=footer)


@contextmanager
def _binary_streams():
    """Build the PDF without ASCII85-encoding its streams (reportlab's ``useA85`` setting).

    ASCII85 only makes a PDF 7-bit clean, at 25% more bytes; without reportlab's compiled
    accelerator it runs in pure Python, about a second for the report's figures. The
    streams stay Flate-compressed. The setting is global to reportlab, so it is restored.
    """
    from reportlab import rl_config

    previous = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = previous


def publish_folder(staging: Path, target: Path) -> None:
    """Move a complete staging folder to ``target``, replacing an earlier one atomically."""
    if not target.exists():
        os.rename(staging, target)
        return
    if exchange_paths(staging, target):
        shutil.rmtree(staging)  # staging now holds the old folder
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def write_report(content: ReportContent, weekly_dir: str | Path) -> Path:
    """Write the week's folder under ``weekly_dir`` atomically; returns its path."""
    weekly_dir = Path(weekly_dir)
    weekly_dir.mkdir(parents=True, exist_ok=True)
    target = weekly_dir / content.week
    staging = Path(tempfile.mkdtemp(prefix=f".{content.week}.", dir=weekly_dir))
    try:
        images = render_figures(content.figures)
        (staging / "figures").mkdir()
        for name, data in images.items():
            (staging / "figures" / f"{name}.png").write_bytes(data)
        (staging / "report.html").write_text(render_html(content, images), encoding="utf-8")
        render_pdf(content, images, staging / "report.pdf")
        content.summary_csv.write_csv(staging / "summary.csv")
        os.chmod(staging, 0o755)
        publish_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
