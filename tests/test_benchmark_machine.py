"""benchmarks/machine.py runs and reports its four figures (timings are printed, never asserted)."""

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "machine.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_machine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_machine_benchmark_prints_each_figure_and_leaves_no_file(tmp_path, capsys):
    machine = _load()
    assert machine.main(["--gib", "0.01", "--idle", "0", "--repeat", "2", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ") and "0.01 GiB per figure" in lines[0]
    figure = r"\d+\.\d\d / \d+\.\d\d"
    pattern = re.compile(rf"^  \[(\d)\] memory after 0 s idle {figure}; again at once {figure}; "
                         rf"new file {figure}, another {figure}$")
    assert [pattern.match(line)[1] for line in lines[1:]] == ["1", "2"]
    assert list(tmp_path.iterdir()) == []  # the file written is deleted
