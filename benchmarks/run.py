"""Benchmark `outcomes run` stage by stage against the parse floor.

    python benchmarks/run.py [N ...] [--seed S] [--incremental] [--repeat R]

For each N (default 100000 300000 1000000): generates N episodes with `outcomes synth`
(cached in benchmarks/.cache/), times the floor (polars reading the same CSV files and
nothing more), then runs `outcomes run` in a fresh process on fresh output folders and
reads the per-step times it prints. Prints one table: N, rows per table, seconds per
stage, total, floor, total/floor and peak RSS. With --incremental it also times a weekly
run after one new week of exports against a full run (the ingest cache at work), R times
(default 1; single runs on this machine differ by 2-3 s at 1M, so take the median of several).
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
BIN = Path(sys.executable).parent
OUTCOMES = str(BIN / "outcomes")
STEP = re.compile(r"^\s+ok\s+(?P<step>.+?) \((?P<seconds>[0-9.]+)s\)$")
OUTCOME_STEPS = {"outcome_tables", "outcome_summaries", "scored_sessions", "episode_outcomes", "session_relief_table",
                 "condition_summary", "clinic_condition_summary",
                 "pain_trajectories", "km_curves"}
TODAY = "2026-11-27"


def synth(n: int, seed: int) -> tuple[Path, float | None]:
    out = CACHE / f"synth-{n}-{seed}"
    if (out / ".complete").exists():
        return out, None
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([OUTCOMES, "synth", "--episodes", str(n), "--seed", str(seed), "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    (out / ".complete").write_text(f"{seconds:.2f}\n")
    return out, seconds


def rows_per_table(raw: Path) -> dict[str, int]:
    counts = {}
    for table in ("episodes", "sessions", "pain_scores"):
        files = sorted(glob.glob(str(raw / "**" / f"{table}*.csv"), recursive=True))
        counts[table] = sum(pl.scan_csv(f, infer_schema=False).select(pl.len()).collect().item() for f in files)
    return counts


def parse_floor(raw: Path) -> float:
    files = sorted(glob.glob(str(raw / "**" / "*.csv"), recursive=True))
    started = time.perf_counter()
    for f in files:
        pl.read_csv(f, infer_schema=False)
    return time.perf_counter() - started


def timed_run(raw: Path, work: Path, extra: list[str] | None = None) -> dict:
    """`outcomes run` in its own process: wall time, per-stage seconds, peak RSS (MiB)."""
    args = [OUTCOMES, "run", "--raw-dir", str(raw), "--processed-dir", str(work / "processed"),
            "--reports-dir", str(work / "reports"), "--today", TODAY, *(extra or [])]
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    before = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    user, system = (after - earlier for after, earlier in zip(_children_cpu(), before))
    if proc.returncode != 0:
        raise SystemExit(f"outcomes run failed ({proc.returncode}):\n{stdout}\n{stderr}")
    files = re.search(r"^Files: ([0-9,]+) ingested", stdout + "\n" + stderr, re.MULTILINE)
    stages = {"ingest": 0.0, "outcomes": 0.0, "report": 0.0, "checks": 0.0,
              "files": int(files[1].replace(",", "")) if files else 0}
    for line in stderr.splitlines():
        m = STEP.match(line)
        if not m:
            continue
        step, seconds = m["step"], float(m["seconds"])
        if step.startswith("check "):
            stages["checks"] += seconds
        elif step.startswith("ingest"):
            stages["ingest"] += seconds
        elif step in OUTCOME_STEPS:
            stages["outcomes"] += seconds
        elif step == "weekly_report":
            stages["report"] += seconds
    return {"wall": wall, "user": user, "system": system, **stages}


def _children_cpu() -> tuple[float, float]:
    """User and system CPU seconds of the finished child processes so far."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def peak_rss_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def incremental(raw: Path) -> tuple[dict, dict]:
    """Full cold run vs a weekly run after one new week (ingest cache warm for the rest)."""
    weeks = sorted(p.name for p in raw.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        staged = tmp / "raw"
        staged.mkdir()
        # real folders of hard-linked (or copied) files: ingest refuses symlinks out of its folder
        for week in weeks[:-1]:
            _link_tree(raw / week, staged / week)
        full_run = timed_run(raw, tmp / "full")
        first = timed_run(staged, tmp / "weekly")  # a year of data, cache filled
        _link_tree(raw / weeks[-1], staged / weeks[-1])
        weekly_run = timed_run(staged, tmp / "weekly")
    for run, name in ((full_run, "full"), (first, "weekly (before the new week)"), (weekly_run, "weekly")):
        if run["files"] == 0:
            raise SystemExit(f"incremental benchmark: the {name} run ingested no file")
    return full_run, weekly_run


def _run_text(run: dict) -> str:
    return f"{run['wall']:.1f}s ({run['user']:.1f} user + {run['system']:.1f} system CPU-s)"


def _link_tree(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)
    shutil.copytree(source, target, copy_function=link)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--incremental", action="store_true", help="also time a weekly incremental run")
    parser.add_argument("--repeat", type=int, default=1, help="incremental measurements per N (median shown)")
    args = parser.parse_args(argv)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"polars {pl.__version__}")
    header = (f"{'N':>9} {'episodes':>9} {'sessions':>10} {'scores':>11} {'synth':>6} {'ingest':>7} {'outcomes':>8} "
              f"{'report':>7} {'checks':>7} {'total':>7} {'floor':>6} {'tot/fl':>7} {'ing+out/fl':>10} {'peakMiB':>8}")
    print(header)
    for n in args.sizes:
        raw, synth_seconds = synth(n, args.seed)
        rows = rows_per_table(raw)
        floor = parse_floor(raw)
        with tempfile.TemporaryDirectory() as tmp:
            before = peak_rss_mib()
            result = timed_run(raw, Path(tmp))
            peak = peak_rss_mib()
        synth_text = f"{synth_seconds:6.1f}" if synth_seconds is not None else f"{'cached':>6}"
        print(f"{n:>9,} {rows['episodes']:>9,} {rows['sessions']:>10,} {rows['pain_scores']:>11,} {synth_text} "
              f"{result['ingest']:7.1f} {result['outcomes']:8.1f} {result['report']:7.1f} {result['checks']:7.1f} "
              f"{result['wall']:7.1f} {floor:6.2f} {result['wall'] / floor:7.1f} "
              f"{(result['ingest'] + result['outcomes']) / floor:10.1f} {max(peak, before):8.0f}", flush=True)
        if args.incremental:
            pairs = []
            for _ in range(max(args.repeat, 1)):  # each printed as soon as it is measured
                full, weekly = incremental(raw)
                pairs.append((full, weekly))
                print(f"{'':>9} incremental: full run {_run_text(full)}, weekly run after one new week "
                      f"{_run_text(weekly)} ({100 * weekly['wall'] / full['wall']:.0f}% of full)", flush=True)
                stages = ", ".join(f"{stage} {full[stage]:.1f}s -> {weekly[stage]:.1f}s"
                                   for stage in ("ingest", "checks", "outcomes", "report"))
                print(f"{'':>9} incremental by stage (full -> weekly): {stages}", flush=True)
            if len(pairs) > 1:
                full_wall = statistics.median(full["wall"] for full, _ in pairs)
                weekly_wall = statistics.median(weekly["wall"] for _, weekly in pairs)
                print(f"{'':>9} incremental, median of {len(pairs)}: full run {full_wall:.1f}s, weekly run "
                      f"{weekly_wall:.1f}s ({100 * weekly_wall / full_wall:.0f}% of full)", flush=True)
    print("peak RSS is the largest of the child processes so far (ru_maxrss); stage times are Dagster step "
          "times; total is the wall time of `outcomes run` including Python and Dagster start-up.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
