"""The `outcomes` command: run the pipeline, or generate demo data.

    outcomes run   [--raw-dir R] [--processed-dir P] [--reports-dir Q] [--as-of D] [--today D] [--wait S]
    outcomes synth --episodes N --seed S --out DIR

Exit status of `run`: 0 done; 1 no report could be made; 2 bad arguments or folders;
75 (EX_TEMPFAIL) another run holds the processed or reports folder; 130 interrupted
(Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import gc
import re
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path

DEFAULT_SETTINGS_FILE = "outcomes.toml"


def _iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat() if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else _bad(text)
    except ValueError:
        return _bad(text)


def _bad(text: str) -> str:
    raise argparse.ArgumentTypeError(f"'{text}' is not a date in the form YYYY-MM-DD")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds (0 or more)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outcomes",
        description="Outcomes analysis for medical-massage clinics: validate exports, compute "
                    "per-condition improvement, responder rates and sessions needed, publish reports.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the whole Dagster asset graph over a raw export folder",
        description="Materialise the whole Dagster asset graph: ingest every export under the raw "
                    "folder (CONTRACT.md), compute the outcome tables (METRICS.md) and publish the "
                    "report. Rejected rows and refused files never stop the run; they are listed "
                    "in rejected_rows.csv and ingest_audit.csv. The run is recorded in the Dagster "
                    "instance under $DAGSTER_HOME when that is set. One run at a time per processed "
                    "folder: a second run waits (--wait) or exits with status 75. A killed run leaves "
                    "the previous outputs intact; the next run cleans up after it.")
    run.add_argument("--raw-dir", default="data/raw", type=Path,
                     help="folder of export files, read-only to the pipeline (default: data/raw)")
    run.add_argument("--processed-dir", default="data/processed", type=Path,
                     help="where the processed tables go (default: data/processed)")
    run.add_argument("--reports-dir", default="reports", type=Path,
                     help="where weekly reports go (default: reports)")
    run.add_argument("--as-of", type=_iso_date, default=None,
                     help="compute metrics as of this date, YYYY-MM-DD (default: the latest accepted "
                          "session or follow-up date)")
    run.add_argument("--today", type=_iso_date, default=None,
                     help="run date for the rule 'not after the run date', YYYY-MM-DD (default: today "
                          "in the clinic's time zone); for tests and re-runs")
    run.add_argument("--settings", type=Path, default=None,
                     help=f"TOML file with an [analysis] table of settings (default: ./{DEFAULT_SETTINGS_FILE} "
                          "if present, else the METRICS.md defaults)")
    run.add_argument("--vocabulary", type=Path, default=None,
                     help="condition vocabulary CSV (code,alias,label); default: the packaged reference "
                          "file pipelines/reference/conditions.csv")
    run.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS",
                     help="if another run is using the processed or reports folder, wait up to this many "
                          "seconds for it to finish (default 0: refuse at once, exit status 75)")
    run.add_argument("--quiet", action="store_true", help="print only the final summary")

    synth = sub.add_parser(
        "synth", help="write realistic synthetic exports (demo and benchmark data)",
        description="Write deterministic synthetic clinic exports in the contract's form: all 14 "
                    "conditions, dropout, missing scores, follow-ups, weekly export files with "
                    "overlapping and corrected rows, and a few bad rows. Parameters and their "
                    "sources: pipelines/synth/params.py.")
    synth.add_argument("--episodes", type=int, required=True, help="number of episodes of care to generate")
    synth.add_argument("--seed", type=int, default=1, help="random seed; the same seed gives identical files (default 1)")
    synth.add_argument("--out", type=Path, required=True, help="folder to write the export files into")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace synthetic exports already in --out (otherwise refuse to mix data sets)")
    synth.add_argument("--today", type=_iso_date, default=None,
                       help="last date of the generated data, YYYY-MM-DD (default: the generator's fixed date)")
    return parser


INTERRUPTED = "outcomes: interrupted; outputs already published are intact (the next run cleans up)"


def main(argv: list[str] | None = None) -> int:
    """The command; ``argv`` None means this process is the `outcomes` program itself
    (the console script, ``python -m pipelines.cli``), which ends when main returns."""
    program = argv is None
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, systemd, docker stop) stops a run like Ctrl-C does; Dagster maps it the same way
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.command == "run":
            return _run(args, program=program)
        return _synth(args)
    except KeyboardInterrupt:
        print(INTERRUPTED if args.command == "run" else "outcomes: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if program:
            _before_exit()


@contextmanager
def _loading(program: bool):
    """Around loading Dagster, polars, scipy, matplotlib and the Dagster instance in the
    `outcomes` program (``program``; nothing is changed when main is called from Python).

    They are some 300,000 objects, nearly all modules, classes and functions that live
    until the process ends, and the garbage collector would walk all of them in every
    full collection: five or so while they are imported and several during the run,
    0.1-0.3 s each. So collections are off while loading, and what loading made is then
    frozen (``gc.freeze``: left out of every later collection, and never freed, which only
    the process's end would do anyway). Not collected first: that pass costs 0.2-0.3 s and
    would free 1-2 MB.
    Objects the run creates afterwards are collected as usual.
    """
    if not program:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _before_exit() -> None:
    """Called when the program's work is done: everything it wrote is flushed, fsync'ed and
    renamed into place, the Dagster instance disposed and the run lock released.

    Python's shutdown then runs several full garbage collections over everything still
    alive (1.5-2 s after a run, for memory the OS frees at exit anyway). Frozen objects
    are skipped by them; shutdown is otherwise unchanged: atexit handlers, threads
    joined, standard streams flushed, exit status from main's return value.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    gc.freeze()


def _synth(args: argparse.Namespace) -> int:
    from pipelines.synth import generate

    if args.episodes < 1:
        print("outcomes synth: --episodes must be at least 1", file=sys.stderr)
        return 2
    started = time.monotonic()
    kwargs = {"today": date.fromisoformat(args.today)} if args.today else {}
    try:
        summary = generate(args.episodes, args.seed, args.out, overwrite=args.overwrite, **kwargs)
    except FileExistsError as exc:
        print(f"outcomes synth: {exc}; use --overwrite or another --out", file=sys.stderr)
        return 2
    files = sum(len(v) for v in summary["files"].values())
    rows = ", ".join(f"{n:,} {t}" for t, n in summary["rows"].items())
    print(f"Wrote {files} export files to {args.out} in {time.monotonic() - started:.1f}s "
          f"({summary['n_episodes']:,} episodes up to {summary['today']}; rows: {rows})")
    return 0


def _load_settings(path: Path | None):
    from pipelines.settings import Settings

    if path is None:
        default = Path(DEFAULT_SETTINGS_FILE)
        return Settings.from_toml(default) if default.exists() else Settings()
    return Settings.from_toml(path)


#: what argparse's Path makes of a URL (``s3://b/p`` -> ``s3:/b/p``)
_URL_AS_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def _run(args: argparse.Namespace, program: bool = False) -> int:
    for option, value in (("--raw-dir", args.raw_dir), ("--processed-dir", args.processed_dir),
                          ("--reports-dir", args.reports_dir)):
        if _URL_AS_PATH.match(str(value)):
            print(f"outcomes: {option} {value} looks like object storage; `outcomes run` takes local folders "
                  "(a bucket holds the processed tables of Dagster-launched runs: docs/deployment.md)",
                  file=sys.stderr)
            return 2
    if not args.raw_dir.is_dir():
        print(f"outcomes: raw folder {args.raw_dir} does not exist; create it and put export files in it",
              file=sys.stderr)
        return 2
    try:
        settings = _load_settings(args.settings)
    except (OSError, ValueError) as exc:
        print(f"outcomes: settings: {exc}", file=sys.stderr)
        return 2
    if args.vocabulary is not None:
        from pipelines.vocabulary import Vocabulary
        try:
            Vocabulary.load(args.vocabulary)
        except (OSError, ValueError) as exc:
            print(f"outcomes: vocabulary: {exc}", file=sys.stderr)
            return 2

    from pipelines.locking import EX_TEMPFAIL, RunLocked, run_lock

    def waiting(folder, holder) -> None:
        if not args.quiet:
            print(f"outcomes: {folder} is in use by {holder.describe()}; waiting up to {args.wait:g}s",
                  file=sys.stderr)

    # the lock is taken before Dagster is imported, so that a refusal is immediate;
    # run_pipeline takes it again (re-entrant) and keeps it for the whole run
    with ExitStack() as stack:
        try:
            stack.enter_context(run_lock(args.processed_dir, args.reports_dir, wait=args.wait, on_wait=waiting))
        except RunLocked as exc:
            print(f"outcomes: {exc}", file=sys.stderr)
            return EX_TEMPFAIL
        except OSError as exc:
            print(f"outcomes: cannot lock the output folders: {exc.strerror or exc} ({exc.filename or ''})",
                  file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"outcomes run: {args.raw_dir} -> {args.processed_dir}, {args.reports_dir}", file=sys.stderr,
                  flush=True)
        with _loading(program):
            from pipelines.pipeline import default_instance, run_pipeline

            started = time.monotonic()
            # disposed (storage connections closed, an ephemeral instance's folder removed) before the lock is released
            instance = stack.enter_context(default_instance())
        outcome = run_pipeline(raw_dir=args.raw_dir, processed_dir=args.processed_dir,
                               reports_dir=args.reports_dir, as_of=args.as_of or "", today=args.today or "",
                               settings=settings, vocabulary_file=args.vocabulary, progress=not args.quiet,
                               instance=instance)
        print(outcome.summary_text(time.monotonic() - started))
        if outcome.interrupted:  # Dagster turned the signal into a failed step
            print(INTERRUPTED, file=sys.stderr)
            return 130
        if not outcome.success:
            print(f"outcomes: run failed: {outcome.failure}", file=sys.stderr)
            return 1
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
