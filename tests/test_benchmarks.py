"""`make bench` must keep working: a tiny run of its throughput part, and its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import cost
from benchmarks.batch import measure
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
    # What the cost table needs from a run, and what metrics cost per invocation.
    assert set(results["record_sizes"]) == {"input_bytes", "output_bytes", "dead_letter_bytes"}
    assert 0 < results["observability"]["metrics_us"] < 10_000
    assert (
        "Metrics and tracing: writing an invocation's metrics document costs"
        in (tmp_path / "results.md").read_text()
    )
    assert (
        results["command"]
        == f'make bench ARGS="--only throughput --sizes 1 20 --repeat 1 --out {tmp_path} --model-dir {model_dir}"'
    )


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
        "handler ≤ 1.0× floor at 500 records": False,
        "handler ≤ 1.0× floor at 5,000 records": False,
        "peak RSS ≤ 250 MB": False,
        "runtime dependencies ≤ 0.6× mlflow + scikit-learn + boto3": True,
    }
    results["throughput"][0].update(handler_ms=95, handler_vs_floor=0.95)
    results["batch"] = {
        "rows": 1000, "runs": 1,
        "ours": {"wall_s": 3.0, "peak_rss_mb": 300.0},
        "course": {"wall_s": 8.0, "peak_rss_mb": 800.0, "imports_s": 2.0},
        "limit": {"wall_s": 1.4, "peak_rss_mb": 350.0},
        "wall_vs_course": 0.375, "memory_vs_course": 0.375, "wall_vs_limit": 2.14, "predictions_equal": True,
    }  # fmt: skip
    verdicts = {name: ok for name, _, ok in evaluate(results)}
    assert verdicts["handler ≤ 1.0× floor at 500 records"]
    assert [ok for name, ok in verdicts.items() if name.startswith("batch")] == [False, True, False, True]
    table = markdown(results)
    assert "| batch scoring ≤ 0.35× the course's way, wall time | 0.38× | NOT met |" in table
    assert "| `python -m batch` | 3.00 | 300 |  |" in table
    assert "| imports 2.00 |" in table
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


def test_a_small_batch_run_compares_the_three_processes_and_their_predictions(
    model_dir: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "batch", "--batch-rows", "2000", "--batch-runs", "1",
         "--out", str(tmp_path), "--model-dir", str(model_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    batch = json.loads((tmp_path / "results.json").read_text())["batch"]
    assert (batch["rows"], batch["runs"], batch["predictions_equal"]) == (2000, 1, True)
    for design in ("ours", "course", "limit"):
        assert batch[design]["wall_s"] > 0
        assert 50 < batch[design]["peak_rss_mb"] < 2000
    assert batch["limit"]["predict_s"] >= 0
    assert (
        "| batch scoring, 2,000 rows (whole processes, median of 1) |"
        in (tmp_path / "results.md").read_text()
    )


def test_peak_memory_is_the_childs_own_however_large_the_benchmark(tmp_path: Path) -> None:
    """Linux keeps a process's RSS high-water mark across exec: a child spawned straight from a
    large process reports that process's peak. Through `peak`, a small child reports its own."""
    ballast = bytearray(300 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched: resident

    measured = measure([sys.executable, "-c", "pass"], ROOT, tmp_path / "child.log")
    # The warm-container memory child measures itself, spawned straight from the benchmark.
    own = subprocess.run(
        [sys.executable, "-c", "from benchmarks.children import peak_rss_mb; print(peak_rss_mb())"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    assert measured["peak_rss_mb"] < 100
    assert measured["wall_s"] > 0
    assert float(own) < 100
    del ballast


# --- the cost and capacity table (benchmarks/cost.py) ------------------------------------------


def cost_results(handler_100: float = 100.0, write_100: float = 40.0) -> dict[str, Any]:
    rows = [
        {"batch": 100, "handler_ms": handler_100, "write_ms": write_100},
        {"batch": 500, "handler_ms": 300.0, "write_ms": 150.0},
    ]
    sizes = {"input_bytes": 95.0, "output_bytes": 540.0, "dead_letter_bytes": 500.0}
    return {"date": "2026-11-26", "command": "make bench", "throughput": rows, "record_sizes": sizes}


def test_lambda_cost_scales_the_cpu_part_below_one_vcpu_and_bills_whole_milliseconds() -> None:
    row = cost_results()["throughput"][0]
    # 60 ms of CPU at 1,024 MB (1,769 MB is one vCPU) + 40 ms of writing: 143.7 ms, billed 144.
    assert cost.batch_ms(row, 1024) == pytest.approx(60 * 1769 / 1024 + 40)
    assert cost.batch_ms(row, 1769) == cost.batch_ms(row, 3008) == 100
    invocations, gb_seconds = 10_000, 10_000 * 0.144 * 1.0
    assert cost.lambda_cost_per_million(row, 1024, "arm64") == pytest.approx(
        gb_seconds * 0.0000133334 + invocations * 0.20 / 1e6
    )
    assert cost.lambda_cost_per_million(row, 1024, "x86_64") > cost.lambda_cost_per_million(
        row, 1024, "arm64"
    )


def test_shards_follow_whichever_kinesis_write_limit_binds() -> None:
    assert cost.shards_for(1_000, 95) == 1
    assert cost.shards_for(1_001, 95) == 2  # 1,000 records/s per shard
    assert cost.shards_for(100, 20_000) == 2  # 2 MB/s: 1 MiB/s per shard
    assert cost.put_units(95) == 1  # 25 KB units
    assert cost.put_units(30_000) == 2


def test_a_batch_too_slow_for_its_shard_needs_a_parallelization_factor_and_over_ten_says_so() -> None:
    fast, slow = (
        {"batch": 100, "handler_ms": 50.0, "write_ms": 0.0},
        {"batch": 100, "handler_ms": 2000.0, "write_ms": 2000.0},
    )
    assert cost.parallelization(1_000, fast, 1769) == 1  # 2,000 records/s per batch in flight
    assert cost.parallelization(1_000, slow, 1769) == 20  # 50 records/s per batch in flight
    section = cost.cost_markdown(cost_results(handler_100=2000.0, write_100=2000.0))
    assert "20 (over 10: add shards)" in section


def test_the_cost_section_needs_batches_of_100_and_500_and_the_record_sizes() -> None:
    results = cost_results()
    section = cost.cost_markdown(results)
    assert "| 1,024 MB | 100 | 143.7 ms |" in section
    # shards in and out; 696 records/s per batch in flight, so a factor of 2; concurrency
    assert "| 100,000 | 100 | 100 | 2 | 200 |" in section
    assert "(unconfirmed: one public reference)" in section
    assert cost.cost_markdown({**results, "record_sizes": None}) == ""
    assert cost.cost_markdown({**results, "throughput": results["throughput"][:1]}) == ""


def test_the_cost_section_regenerates_from_a_results_file_and_replaces_its_quote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(cost_results()))
    assert cost.main([str(results)]) == 0
    printed = capsys.readouterr().out
    assert printed == cost.cost_markdown(cost_results())
    start, end = cost.MARKERS
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\n{start}\nold\n{end}\nafter\n")
    assert cost.quote(printed, page)
    assert page.read_text() == f"# Benchmarks\n\n{start}\n{printed}{end}\nafter\n"
    results.write_text(json.dumps({"throughput": []}))
    assert cost.main([str(results)]) == 1
