"""`make bench` must keep working: a tiny run of its throughput part, and its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.run import RESULTS_MARKERS, evaluate, markdown, quote_in_results_page

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_throughput_run_writes_the_table_json_and_plot(model_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "throughput", "--sizes", "1", "20", "--repeat", "1",
         "--out", str(tmp_path), "--model-dir", str(model_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    [one, twenty] = results["throughput"]
    assert (one["batch"], twenty["batch"]) == (1, 20)
    for row in (one, twenty):
        assert min(row["handler_ms"], row["floor_ms"], row["per_record_ms"]) > 0
        assert row["decode_ms"] + row["predict_ms"] + row["write_ms"] <= row["handler_ms"]
    assert (tmp_path / "throughput.png").read_bytes().startswith(b"\x89PNG")
    assert "| 20 |" in (tmp_path / "results.md").read_text()


def test_targets_are_reported_as_met_or_not() -> None:
    results = {
        "date": "2026-11-25",
        "machine": "test",
        "command": "make bench",
        "throughput": [
            {"batch": 500, "handler_ms": 110, "floor_ms": 100, "handler_vs_floor": 1.1, "records_per_s": 4545,
             "decode_ms": 1, "predict_ms": 2, "write_ms": 100},
            {"batch": 5000, "handler_ms": 1300, "floor_ms": 1000, "handler_vs_floor": 1.3, "records_per_s": 3846,
             "decode_ms": 1, "predict_ms": 2, "write_ms": 1000},
        ],
        "memory": {"peak_rss_mb": 300, "rss_after_init_mb": 200, "batches": 2, "batch_size": 1000},
        "size": {"runtime_mb": 400, "full_mb": 800, "ratio": 0.5},
    }  # fmt: skip
    verdicts = {name: ok for name, _, ok in evaluate(results)}
    assert verdicts == {
        "handler ≤ 1.25× floor at 500 records": True,
        "handler ≤ 1.25× floor at 5,000 records": False,
        "peak RSS ≤ 250 MB": False,
        "runtime dependencies ≤ 0.6× mlflow + scikit-learn + boto3": True,
    }
    table = markdown(results)
    assert "| peak RSS ≤ 250 MB | 300 MB | NOT met |" in table
    assert "| 5,000 | 1,300.0 |" in table


def test_a_full_run_replaces_only_the_quoted_table_in_the_results_page(tmp_path: Path) -> None:
    start, end = RESULTS_MARKERS
    readme = tmp_path / "benchmarks.md"
    readme.write_text(f"# Title\n\n{start}\n| old | table |\n{end}\n\n## After\n")
    quote_in_results_page("| new | table |\n", readme)
    assert readme.read_text() == f"# Title\n\n{start}\n| new | table |\n{end}\n\n## After\n"


def test_the_results_page_quotes_the_committed_results_table() -> None:
    start, end = RESULTS_MARKERS
    quoted = (ROOT / "docs" / "benchmarks.md").read_text().split(start, 1)[1].split(end, 1)[0]
    assert quoted.strip() == (ROOT / "benchmarks" / "results" / "results.md").read_text().strip()
