"""A Dagster logger that prints one short line per finished step, for the `outcomes` CLI."""

import logging
import sys
import time

import dagster as dg

_STEP_NAMES = {
    "ingest": "ingest: read and validate exports",
}


class _ProgressHandler(logging.Handler):
    def __init__(self, stream) -> None:
        super().__init__(level=logging.DEBUG)
        self.stream = stream
        self.started: dict[str, float] = {}
        self.check_steps: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event") if isinstance(meta, dict) else None
        if event is None:
            if record.levelno >= logging.INFO and meta.get("step_key"):
                self.stream.write(f"    {record.msg if isinstance(record.msg, str) else record.getMessage()}\n")
            return
        kind, step = event.event_type_value, event.step_key
        if kind == "STEP_START":
            self.started[step] = time.monotonic()
        elif kind == "STEP_SUCCESS":
            seconds = time.monotonic() - self.started.get(step, time.monotonic())
            name = f"check {self.check_steps[step]}" if step in self.check_steps else _STEP_NAMES.get(step, step)
            self.stream.write(f"  ok    {name} ({seconds:.1f}s)\n")
        elif kind == "STEP_FAILURE":
            error = event.event_specific_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            message = error.message.strip().splitlines()[-1] if error else "failed"
            self.stream.write(f"  FAIL  {step}: {message}\n")
        elif kind == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            # a step that evaluates several checks is named by all of them
            name = evaluation.asset_check_key.name
            self.check_steps[step] = f"{self.check_steps[step]}, {name}" if step in self.check_steps else name
            if not evaluation.passed:
                self.stream.write(f"  CHECK FAILED  {evaluation.asset_check_key.name} on "
                                  f"{evaluation.asset_key.to_user_string()}\n")
        self.stream.flush()


@dg.logger(description="One line per finished step and failed check (used by `outcomes run`).")
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("outcomes.progress", level=logging.DEBUG)
    logger.addHandler(_ProgressHandler(sys.stderr))
    return logger
