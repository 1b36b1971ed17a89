"""Figures drawn on two cores (pipelines.reports.render.render_figures): the same PNGs as
drawing them one by one, whatever the helper process does, and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.reports import charts, render
from pipelines.reports.weekly import FigureItem

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper process is Linux-only")


def make_figures(n: int = 5) -> list[FigureItem]:
    items = []
    for i in range(n):
        fig = charts._figure()
        for panel in range(1 + i % 3):  # 1 to 3 panels: different drawing costs
            ax = fig.add_subplot(1 + i % 3, 1, panel + 1)
            charts._style(ax, grid="y")
            ax.plot(range(10), [(x * (i + 1) + panel) % 7 for x in range(10)], color=charts.PALETTE["condition"])
            charts._panel_title(ax, f"Panel {panel + 1} of figure {i}")
            charts._labels(ax, "Session", "Pain (0-10)")
        charts._headline(fig, f"Figure {i}")
        items.append(FigureItem(name=f"fig{i}", title=f"Figure {i}", figure=fig, caption=""))
    return items


def one_by_one(items: list[FigureItem]) -> dict[str, bytes]:
    return {item.name: charts.figure_to_png_bytes(item.figure) for item in items}


def children() -> set[int]:
    """Child processes of this one, zombies included (they would be unreaped helpers)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            found.add(int(entry.name))
    return found


@pytest.fixture
def helper_allowed(monkeypatch):
    monkeypatch.setenv(render.RENDER_PROCESSES_ENV, "2")  # even where only one core is free
    before = children()
    yield
    assert children() <= before, "a helper process was left behind"


def test_two_processes_give_the_same_pngs_in_the_same_order(helper_allowed):
    expected = one_by_one(make_figures())
    images = render.render_figures(make_figures())
    assert list(images) == list(expected)
    assert images == expected


def test_helper_really_draws_part_of_the_figures(helper_allowed, monkeypatch):
    drawn_here = []
    real = render.figure_to_png_bytes

    def counting(fig):
        drawn_here.append(fig)
        time.sleep(0.2)  # each figure takes a while, so both processes get some
        return real(fig)

    monkeypatch.setattr(render, "figure_to_png_bytes", counting)
    items = make_figures(6)
    images = render.render_figures(items)
    assert set(images) == {item.name for item in items}
    assert 0 < len(drawn_here) < len(items), "this process drew all or none of the figures"


def test_one_process_when_asked(monkeypatch):
    monkeypatch.setenv(render.RENDER_PROCESSES_ENV, "1")
    monkeypatch.setattr(render.os, "fork", lambda: pytest.fail("forked although asked not to"))
    items = make_figures(3)
    assert render.render_figures(items) == one_by_one(make_figures(3))


def test_no_fork_possible_draws_everything_here(helper_allowed, monkeypatch):
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(render.os, "fork", no_fork)
    assert render.render_figures(make_figures(3)) == one_by_one(make_figures(3))


def test_a_helper_that_dies_is_replaced_by_drawing_here(helper_allowed, monkeypatch):
    def dies(figures, queue_fd, result_fd, unused_fd, parent):
        render._take(queue_fd)  # takes a figure away from the queue, then crashes
        os._exit(3)

    monkeypatch.setattr(render, "_helper_main", dies)
    assert render.render_figures(make_figures(4)) == one_by_one(make_figures(4))


def test_a_helper_that_hangs_is_killed_and_replaced(helper_allowed, monkeypatch):
    def hangs(figures, queue_fd, result_fd, unused_fd, parent):
        render._take(queue_fd)
        time.sleep(600)
        os._exit(0)

    monkeypatch.setattr(render, "_helper_main", hangs)
    monkeypatch.setattr(render, "HELPER_GRACE_SECONDS", 0.5)
    assert render.render_figures(make_figures(4)) == one_by_one(make_figures(4))


def test_a_failing_figure_raises_here_and_the_helper_is_reaped(helper_allowed):
    items = make_figures(4)
    items[2].figure.text(0.5, 0.5, r"$\notacommand{x}$")  # mathtext: fails only when drawn
    with pytest.raises(ValueError):
        render.render_figures(items)


def test_the_helper_dies_with_a_killed_parent(tmp_path):
    """SIGKILL of the run (no cleanup possible) must not leave the helper running."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_render_parallel import make_figures
        from pipelines.reports import render

        def hangs(figures, queue_fd, result_fd, unused_fd, parent):
            render._die_with_parent(parent)
            os.write(1, f"helper {{os.getpid()}}\\n".encode())
            time.sleep(600)
            os._exit(0)

        render._helper_main = hangs
        render.HELPER_GRACE_SECONDS = 600
        os.environ[render.RENDER_PROCESSES_ENV] = "2"
        render.render_figures(make_figures(3))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("helper "), line
        helper = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _running(helper):
            time.sleep(0.05)
        assert not _running(helper), "the helper outlived its killed parent"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_garbage_collection_is_back_to_normal_afterwards(helper_allowed):
    import gc

    render.render_figures(make_figures(3))
    assert gc.get_freeze_count() == 0 and gc.isenabled()
