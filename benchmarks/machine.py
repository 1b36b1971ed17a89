"""What this machine charges for memory and for writing files, which the pipeline's own
figures (benchmarks/run.py) depend on but do not show.

    python benchmarks/machine.py [--gib G] [--idle S] [--repeat R]

Prints, per repeat:

* touching G GiB of memory the process has not used (numpy fills an array, then frees it),
  after S seconds of idling, and again at once (memory the machine still holds);
* writing G GiB to a new file (page cache, not synced) and deleting it, twice.

On a machine whose hypervisor takes back memory the guest frees (free page reporting, a
balloon), the first figure is several times the second: every large allocation a run makes
after memory was freed pays it again, as system time. benchmarks/README.md says what was
measured here.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time

import numpy as np


def _timed(action) -> tuple[float, float]:
    """Wall and system seconds of ``action()``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    started = time.perf_counter()
    action()
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before


def touch(gib: float) -> None:
    array = np.ones(int(gib * (1 << 30)) // 8)
    del array


def write_file(gib: float, folder: str) -> None:
    block = b"\1" * (1 << 20)
    path = os.path.join(folder, "machine-benchmark.bin")
    with open(path, "wb") as fh:
        for _ in range(int(gib * 1024)):
            fh.write(block)
    os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB touched and written (default 1)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before the first touch (default 10)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the file written")
    args = parser.parse_args(argv)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores; {args.gib:g} GiB per figure, "
          f"seconds per GiB (wall / system)")
    for repeat in range(args.repeat):
        time.sleep(args.idle)
        cold = _timed(lambda: touch(args.gib))
        warm = _timed(lambda: touch(args.gib))
        file_1 = _timed(lambda: write_file(args.gib, args.dir))
        file_2 = _timed(lambda: write_file(args.gib, args.dir))
        figures = [cold, warm, file_1, file_2]
        wall_sys = ["{:.2f} / {:.2f}".format(w / args.gib, s / args.gib) for w, s in figures]
        print(f"  [{repeat + 1}] memory after {args.idle:g} s idle {wall_sys[0]}; again at once {wall_sys[1]}; "
              f"new file {wall_sys[2]}, another {wall_sys[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
