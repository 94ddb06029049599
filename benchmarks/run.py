"""`make bench`: throughput, cold start, memory and size of the streaming function, each against
baselines measured in the same run, so the ratios hold on a noisy machine.

Everything talks to a moto server over loopback HTTP with the real trained model. Each
throughput measurement starts from an empty moto (`POST /moto-api/reset`): moto's PutRecords
gets slower as a stream fills (about +6 us per stored record per call), which would penalise
whatever runs last. Results: benchmarks/results/{results.json,results.md,throughput.png}.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from benchmarks import batch as batch_part
from benchmarks import cost, observability
from benchmarks.children import Context, event
from local_aws.moto_stack import MotoServer, free_port, upload_model
from stream.features import ride_features
from stream.kinesis_output import MAX_RECORDS_PER_CALL
from stream.model_loading import load_model, local_model_problem
from stream.ride_events import KinesisRecord, PredictionEvent

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VENVS = ROOT / ".bench"
UV = ROOT / ".tools" / "bin" / "uv"
SIZES = [1, 10, 100, 500, 1000, 5000]
PARTS = ["throughput", "cold", "memory", "size", "batch"]
BUCKET, PREFIX, OUTPUT = "ride-models", "ride-duration/model", "ride_predictions"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
TARGETS = {
    # The floor predicts from feature dicts; the handler builds the model's input by column.
    "handler_vs_floor": 1.0,
    "cold_start_vs_pyfunc": 0.6,
    "peak_rss_mb": 250,
    "runtime_size_vs_full": 0.6,
    "batch_vs_course": 0.35,
    "batch_memory_vs_course": 0.4,
    "batch_vs_limit": 2.0,
}


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Bench:
    moto: MotoServer
    model_dir: Path
    repeat: int
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": self.moto.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.moto.endpoint_url,
            "PREDICTIONS_STREAM_NAME": OUTPUT,
            "MODEL_URI": f"s3://{BUCKET}/{PREFIX}",
            "LOG_LEVEL": "WARNING",
        }

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.moto.endpoint_url, region_name="us-east-1")

    def reset(self, with_model: bool = False) -> None:
        """An empty moto with a fresh output stream (and the model in S3 if asked)."""
        request = urllib.request.Request(f"{self.moto.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request).close()
        kinesis = self.client("kinesis")
        kinesis.create_stream(StreamName=OUTPUT, ShardCount=1)
        kinesis.get_waiter("stream_exists").wait(StreamName=OUTPUT, WaiterConfig={"Delay": 0.05})
        if with_model:
            upload_model(self.client("s3"), self.model_dir, BUCKET, PREFIX)

    # -- throughput ---------------------------------------------------------------------------

    def throughput(self, sizes: list[int], per_record_limit: int) -> None:
        self.reset(with_model=True)
        os.environ.update(
            {**self.env, "LOG_LEVEL": "INFO", "MODEL_CACHE_DIR": str(VENVS / "cache" / "throughput")}
        )
        import lambda_function  # noqa: PLC0415 - the real entry point, initialised as in Lambda

        log_stream = io.StringIO()
        lambda_function.logger.registered_handler.setStream(log_stream)  # type: ignore[attr-defined]
        service = lambda_function.service
        model = service.model
        kinesis = self.client("kinesis")
        metrics_sink = io.StringIO()
        rows = []
        offsets = itertools.count(0, 10_000)
        for size in sizes:
            batch = event(size)

            def handler(size: int = size) -> float:
                # New records every time (the same ones again would be a re-delivery, skipped);
                # the same rides, so the bytes written match the floor's. The metrics document
                # each call prints (stdout, as in Lambda) goes to a buffer, not to the terminal.
                fresh = event(size, sequence_offset=next(offsets))
                with contextlib.redirect_stdout(metrics_sink):
                    return timed(lambda: lambda_function.lambda_handler(fresh, Context()))

            designs: dict[str, Callable[[], float]] = {
                "handler": handler,
                "floor": floor_design(kinesis, model, batch),
            }
            if size <= per_record_limit:
                designs["per_record"] = per_record_design(kinesis, model, batch)
            row: dict[str, Any] = {"batch": size}
            samples: dict[str, list[float]] = {design: [] for design in designs}
            splits = []
            # Interleaved, in alternating order (ABBA...), so that moto's own variations (one
            # PutRecords of 500 takes 45 to 95 ms here) fall on the handler and the floor
            # alike; many repetitions, medians. The per-record design, tens of times slower, is
            # measured three times from 100 records up.
            repeats = self.repeat if size < 5000 else max(3, self.repeat // 2)
            for rep in range(repeats):
                order = list(designs) if rep % 2 == 0 else list(reversed(designs))
                for design in order:
                    if design == "per_record" and size >= 100 and rep >= 3:
                        continue
                    self.reset()
                    log_stream.seek(0)
                    log_stream.truncate()
                    samples[design].append(designs[design]())
                    if design == "handler":
                        splits.append(last_batch_log(log_stream))
            for design, values in samples.items():
                row[f"{design}_ms"] = statistics.median(values) * 1000
                row[f"{design}_max_ms"] = max(values) * 1000
            for part in ("decode_ms", "predict_ms", "write_ms"):
                row[part] = statistics.median(s[part] for s in splits)
            row["records_per_s"] = size / row["handler_ms"] * 1000
            row["handler_vs_floor"] = row["handler_ms"] / row["floor_ms"]
            if "per_record_ms" in row:
                row["speedup_vs_per_record"] = row["per_record_ms"] / row["handler_ms"]
                row["floor_speedup_vs_per_record"] = row["per_record_ms"] / row["floor_ms"]
            rows.append(row)
            say(
                f"  batch {size:>5}: handler {row['handler_ms']:8.1f} ms ({row['records_per_s']:8,.0f} rec/s)"
                f" · floor {row['floor_ms']:8.1f} ms · handler/floor {row['handler_vs_floor']:.2f}"
                + (f" · per-record {row['per_record_ms']:9.1f} ms" if "per_record_ms" in row else "")
            )
        self.results["throughput"] = rows
        self.results["record_sizes"] = cost.record_sizes(model.info)
        self.results["observability"] = observability.per_invocation_cost_us()

    # -- cold start, memory, size -------------------------------------------------------------

    def child(
        self, python: Path, kind: str, extra_env: dict[str, str] | None = None
    ) -> tuple[float, dict[str, Any]]:
        self.reset(with_model=True)
        env = {
            **os.environ,
            **self.env,
            "PYTHONPATH": str(ROOT),
            "MODEL_CACHE_DIR": str(VENVS / "cache" / kind),
            **(extra_env or {}),
        }
        subprocess.run(["rm", "-rf", env["MODEL_CACHE_DIR"]], check=True)
        spawned = time.time()
        done = subprocess.run(
            [str(python), "-m", "benchmarks.children", kind],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{kind} with {python} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return spawned, json.loads(lines[-1].removeprefix("RESULT "))

    def cold_start(self, runs: int, runtime_python: Path) -> None:
        ours_rows, pyfunc_rows = [], []
        dev_python = Path(sys.executable)
        for python in (runtime_python, dev_python):  # warm the page cache and __pycache__ first
            self.child(python, "cold-ours")
        self.child(dev_python, "cold-pyfunc")
        for run in range(runs):
            spawned, r = self.child(runtime_python, "cold-ours")
            ours_rows.append(
                {
                    "total_s": r["answered"] - spawned,
                    "interpreter_s": r["started"] - spawned,
                    "imports_s": r["initialised"]
                    - r["started"]
                    - r["fetch_s"]
                    - r["deserialise_s"]
                    - r["checks_s"],
                    "download_s": r["fetch_s"],
                    "deserialise_s": r["deserialise_s"],
                    "checks_s": r["checks_s"],
                    "first_batch_s": r["answered"] - r["initialised"],
                }
            )
            spawned, r = self.child(dev_python, "cold-ours")
            ours_rows[-1]["total_dev_env_s"] = r["answered"] - spawned
            spawned, r = self.child(runtime_python, "cold-ours", observability.TRACING_ENV)
            ours_rows[-1]["total_tracing_s"] = r["answered"] - spawned
            ours_rows[-1]["imports_tracing_s"] = (
                r["initialised"] - r["started"] - r["fetch_s"] - r["deserialise_s"] - r["checks_s"]
            )
            spawned, r = self.child(dev_python, "cold-pyfunc")
            pyfunc_rows.append(
                {
                    "total_s": r["answered"] - spawned,
                    "interpreter_s": r["started"] - spawned,
                    "imports_s": r["imported"] - r["started"],
                    "load_model_s": r["loaded"] - r["imported"],
                    "first_batch_s": r["answered"] - r["loaded"],
                }
            )
            say(
                f"  run {run + 1}/{runs}: ours {ours_rows[-1]['total_s']:.2f} s · pyfunc {pyfunc_rows[-1]['total_s']:.2f} s"
            )
        setups = [
            self.child(runtime_python, "observability", {"LAMBDA_TASK_ROOT": str(ROOT)})[1]
            for _ in range(runs)
        ]
        self.results.setdefault("observability", {}).update(median_of(setups))
        ours, pyfunc = median_of(ours_rows), median_of(pyfunc_rows)
        self.results["cold_start"] = {
            "ours": ours,
            "pyfunc": pyfunc,
            "ratio": ours["total_s"] / pyfunc["total_s"],
        }

    def batch(self, rows: int, runs: int) -> None:
        self.results["batch"] = result = batch_part.run(ROOT, self.model_dir, rows, runs, say)
        say(
            f"  batch scoring / course's way: {result['wall_vs_course']:.2f}× the time, "
            f"{result['memory_vs_course']:.2f}× the memory; / limit: {result['wall_vs_limit']:.2f}×; "
            f"predictions {'equal' if result['predictions_equal'] else 'DIFFERENT'}"
        )

    def memory(self, runtime_python: Path) -> None:
        _, result = self.child(runtime_python, "memory")
        self.results["memory"] = result
        say(
            f"  peak RSS {result['peak_rss_mb']:.0f} MB after {result['batches']} batches of {result['batch_size']:,}"
        )


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def last_batch_log(stream: io.StringIO) -> dict[str, float]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if '"batch processed"' in line]
    return lines[-1]


def floor_design(kinesis: Any, model: Any, batch: dict[str, Any]) -> Callable[[], float]:
    """The floor: one predict of the same features and PutRecords of the same bytes, nothing else."""
    records = [KinesisRecord.from_raw(raw) for raw in batch["Records"]]
    rides = [json.loads(base64.b64decode(r.data)) for r in records]
    features = [
        ride_features(r["ride"]["PULocationID"], r["ride"]["DOLocationID"], r["ride"]["trip_distance"])
        for r in rides
    ]
    durations = model.predict(features)
    entries = [  # exactly what the handler writes, serialised before the clock starts
        {
            "Data": PredictionEvent(r["ride_id"], float(d), model.info, rec.source()).to_json(),
            "PartitionKey": str(r["ride_id"]),
        }
        for r, d, rec in zip(rides, durations, records, strict=True)
    ]

    def run() -> float:
        started = time.perf_counter()
        model.predict(features)
        for start in range(0, len(entries), MAX_RECORDS_PER_CALL):
            kinesis.put_records(StreamName=OUTPUT, Records=entries[start : start + MAX_RECORDS_PER_CALL])
        return time.perf_counter() - started

    return run


def per_record_design(kinesis: Any, model: Any, batch: dict[str, Any]) -> Callable[[], float]:
    """The tutorials' design: per record, decode, one model call, one put_record."""

    def run() -> float:
        started = time.perf_counter()
        for record in batch["Records"]:
            ride_event = json.loads(base64.b64decode(record["kinesis"]["data"]))
            ride = ride_event["ride"]
            prediction = model.predict(
                [ride_features(ride["PULocationID"], ride["DOLocationID"], ride["trip_distance"])]
            )[0]
            output = {
                "model": "ride_duration_prediction_model",
                "version": model.info.version,
                "prediction": {"ride_duration": float(prediction), "ride_id": ride_event["ride_id"]},
            }
            kinesis.put_record(
                StreamName=OUTPUT, Data=json.dumps(output), PartitionKey=str(ride_event["ride_id"])
            )
        return time.perf_counter() - started

    return run


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


# -- environments and sizes -----------------------------------------------------------------


def lock_version(package: str) -> str:
    lock = (ROOT / "uv.lock").read_text()
    marker = f'name = "{package}"\nversion = "'
    start = lock.index(marker) + len(marker)
    return lock[start : lock.index('"', start)]


def build_venv(name: str, populate: Callable[[Path, dict[str, str]], None]) -> Path:
    """A bytecode-compiled virtualenv under .bench/, as the image would have it."""
    venv = VENVS / name
    stamp = venv / ".built-from-lock"
    # The lock and the interpreter (make bench PYTHON=python3.13 measures Lambda's Python).
    digest = hashlib.sha256((ROOT / "uv.lock").read_bytes() + sys.version.encode()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == str(digest)):
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        env = {**os.environ, "UV_COMPILE_BYTECODE": "1", "UV_PYTHON_DOWNLOADS": "never"}
        subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
        populate(venv, env)
        stamp.write_text(str(digest))
    return venv


def runtime_venv() -> Path:
    def populate(venv: Path, env: dict[str, str]) -> None:
        subprocess.run(
            [str(UV), "sync", "-q", "--frozen", "--no-default-groups", "--python", sys.executable],
            cwd=ROOT, env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)}, check=True,
        )  # fmt: skip

    return build_venv("runtime", populate)


def full_venv() -> Path:
    packages = [f"{name}=={lock_version(name)}" for name in ("mlflow", "scikit-learn", "boto3")]

    def populate(venv: Path, env: dict[str, str]) -> None:
        subprocess.run(
            [str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *packages],
            env=env,
            check=True,
        )

    return build_venv("full", populate)


def site_packages_bytes(venv: Path) -> int:
    [site] = (venv / "lib").glob("python3.*/site-packages")
    return sum(path.stat().st_size for path in site.rglob("*") if path.is_file() and not path.is_symlink())


# -- report ---------------------------------------------------------------------------------


def evaluate(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    checks = []
    for row in results.get("throughput", []):
        if row["batch"] in (500, 5000):
            checks.append(
                (f"handler ≤ {TARGETS['handler_vs_floor']}× floor at {row['batch']:,} records",
                 f"{row['handler_vs_floor']:.2f}×", row["handler_vs_floor"] <= TARGETS["handler_vs_floor"])
            )  # fmt: skip
    if cold := results.get("cold_start"):
        checks.append(
            (f"cold start ≤ {TARGETS['cold_start_vs_pyfunc']}× mlflow.pyfunc.load_model path",
             f"{cold['ratio']:.2f}×", cold["ratio"] <= TARGETS["cold_start_vs_pyfunc"])
        )  # fmt: skip
    if memory := results.get("memory"):
        checks.append(
            (f"peak RSS ≤ {TARGETS['peak_rss_mb']} MB", f"{memory['peak_rss_mb']:.0f} MB",
             memory["peak_rss_mb"] <= TARGETS["peak_rss_mb"])
        )  # fmt: skip
    if size := results.get("size"):
        checks.append(
            (f"runtime dependencies ≤ {TARGETS['runtime_size_vs_full']}× mlflow + scikit-learn + boto3",
             f"{size['ratio']:.2f}×", size["ratio"] <= TARGETS["runtime_size_vs_full"])
        )  # fmt: skip
    if batch := results.get("batch"):
        checks += [
            (f"batch scoring ≤ {TARGETS['batch_vs_course']}× the course's way, wall time",
             f"{batch['wall_vs_course']:.2f}×", batch["wall_vs_course"] <= TARGETS["batch_vs_course"]),
            (f"batch scoring ≤ {TARGETS['batch_memory_vs_course']}× the course's way, peak memory",
             f"{batch['memory_vs_course']:.2f}×", batch["memory_vs_course"] <= TARGETS["batch_memory_vs_course"]),
            (f"batch scoring ≤ {TARGETS['batch_vs_limit']}× the limit, wall time",
             f"{batch['wall_vs_limit']:.2f}×", batch["wall_vs_limit"] <= TARGETS["batch_vs_limit"]),
            ("batch predictions equal to the course's way's, to the bit",
             "equal" if batch["predictions_equal"] else "different", batch["predictions_equal"]),
        ]  # fmt: skip
    return checks


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Measured {results['date']} on {results['machine']} with `{results['command']}`.", ""]
    if rows := results.get("throughput"):
        lines += [
            "| batch | handler ms | decode+validate | predict | write | records/s | floor ms | handler / floor | per-record ms | speed-up vs per-record |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            per_record = f"{r['per_record_ms']:,.0f}" if "per_record_ms" in r else "—"
            speedup = (
                f"{r['speedup_vs_per_record']:.1f}× (floor {r['floor_speedup_vs_per_record']:.1f}×)"
                if "per_record_ms" in r
                else "—"
            )
            lines.append(
                f"| {r['batch']:,} | {r['handler_ms']:,.1f} | {r['decode_ms']:,.1f} | {r['predict_ms']:,.1f} | {r['write_ms']:,.1f} "
                f"| {r['records_per_s']:,.0f} | {r['floor_ms']:,.1f} | {r['handler_vs_floor']:.2f} | {per_record} | {speedup} |"
            )
        lines.append("")
    if cold := results.get("cold_start"):
        o, p = cold["ours"], cold["pyfunc"]
        lines += [
            "| cold start (process start → first 100-record batch answered, model from S3) | total s | interpreter | imports | download | deserialise | checks (signature + self-test) | first batch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| this function (runtime dependencies only) | {o['total_s']:.2f} | {o['interpreter_s']:.2f} | {o['imports_s']:.2f} | {o['download_s']:.2f} | {o['deserialise_s']:.2f} | {o['checks_s']:.3f} | {o['first_batch_s']:.2f} |",
            f"| same code, dev environment (pandas and full mlflow installed) | {o['total_dev_env_s']:.2f} | | | | | | |",
            *([f"| this function with tracing on (X-Ray SDK imported, botocore patched) | {o['total_tracing_s']:.2f} | | {o['imports_tracing_s']:.2f} | | | | |"] if "total_tracing_s" in o else []),
            f"| `mlflow.pyfunc.load_model` path | {p['total_s']:.2f} | {p['interpreter_s']:.2f} | {p['imports_s']:.2f} | {p['load_model_s']:.2f} (download + deserialise) | | | {p['first_batch_s']:.2f} |",
            "",
        ]  # fmt: skip
    if obs := results.get("observability"):
        handler_100 = next(
            (r["handler_ms"] for r in results.get("throughput", []) if r["batch"] == 100), None
        )
        lines += [line, ""] if (line := observability.summary_line(obs, handler_100)) else []
    if memory := results.get("memory"):
        lines += [f"Peak RSS of a warm container after {memory['batches']} batches of {memory['batch_size']:,}: "
                  f"**{memory['peak_rss_mb']:.0f} MB** (after init: {memory['rss_after_init_mb']:.0f} MB).", ""]  # fmt: skip
    if size := results.get("size"):
        lines += [f"Installed runtime dependencies: **{size['runtime_mb']:.0f} MB** vs {size['full_mb']:.0f} MB for "
                  f"mlflow + scikit-learn + boto3 ({size['ratio']:.2f}×).", ""]  # fmt: skip
    if batch := results.get("batch"):
        lines += batch_table(batch)
    lines += ["| target | measured | met |", "|---|---:|:---:|"]
    lines += [f"| {name} | {value} | {'met' if ok else 'NOT met'} |" for name, value, ok in evaluate(results)]
    return "\n".join(lines) + "\n"


def batch_table(batch: dict[str, Any]) -> list[str]:
    def phases(design: str) -> str:
        found = {
            k.removesuffix("_s"): v for k, v in batch[design].items() if k not in ("wall_s", "peak_rss_mb")
        }
        return " · ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in found.items())

    rows = [
        ("`python -m batch`", "ours"),
        ('the course\'s way: pandas, `to_dict(orient="records")`, `mlflow.pyfunc`', "course"),
        ("limit: read 3 columns, sparse input from the vocabulary, predict, write", "limit"),
    ]
    return [
        f"| batch scoring, {batch['rows']:,} rows (whole processes, median of {batch['runs']}) "
        "| wall s | peak RSS MB | phases (s) |",
        "|---|---:|---:|---|",
        *(
            f"| {label} | {batch[d]['wall_s']:.2f} | {batch[d]['peak_rss_mb']:.0f} | {phases(d)} |"
            for label, d in rows
        ),
        "",
    ]


RESULTS_MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")


RESULTS_PAGE = ROOT / "docs" / "benchmarks.md"


def quote_in_results_page(table: str, page: Path = RESULTS_PAGE) -> None:
    """Replace the table between the page's markers with this run's (full runs only)."""
    text = page.read_text()
    start, end = RESULTS_MARKERS
    if start not in text or end not in text:
        say(f"{page.name} has no {start} ... {end} section: table not quoted")
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{table}{end}{tail}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4.5))
    sizes = [r["batch"] for r in rows]
    for key, label in (
        ("handler_ms", "this handler"),
        ("floor_ms", "floor: predict + PutRecords"),
        ("per_record_ms", "per-record: predict + put_record"),
    ):
        points = [(r["batch"], r["batch"] / r[key] * 1000) for r in rows if key in r]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(sizes, [f"{s:,}" for s in sizes])
    axes.set_xlabel("records per batch")
    axes.set_ylabel("records per second")
    axes.set_title("Handler throughput on moto over loopback HTTP")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_results(results: dict[str, Any], out: Path, *, quote: bool, quote_costs: bool = False) -> None:
    """results.json, results.md, throughput.png; and, for a full default run, the table in docs/benchmarks.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    if "throughput" in results:
        plot(results["throughput"], out / "throughput.png")
    written = f"{out}/results.md, results.json, throughput.png"
    if quote:
        quote_in_results_page(table)
        written += ", and the table in docs/benchmarks.md"
    if (costs := cost.cost_markdown(results)) and quote_costs:
        cost.quote(costs)
        written += ", and its cost table"
    if costs:
        (out / "cost.md").write_text(costs)
        say("\n" + costs)
    say("\n" + table)
    say(f"written: {written}")


def command_line(argv: list[str]) -> str:
    """How the results were made, as a user would type it."""
    return "make bench" + (f' ARGS="{" ".join(argv)}"' if argv else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument(
        "--repeat",
        type=int,
        default=15,
        help="measurements per batch size and design, interleaved (median); 5,000 records uses half",
    )
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument(
        "--per-record-limit", type=int, default=5000, help="largest batch for the per-record baseline"
    )
    parser.add_argument("--batch-rows", type=int, default=1_000_000, help="rows of the batch part's file")
    parser.add_argument(
        "--batch-runs", type=int, default=3, help="measurements of each batch design (median)"
    )
    parser.add_argument("--only", choices=PARTS, nargs="+")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "model", help="trained here if missing")
    args = parser.parse_args(argv)
    parts = set(args.only or PARTS)

    model_dir = args.model_dir
    if problem := local_model_problem(model_dir):
        say(f"{problem}: training one (make train) ...")
        subprocess.run(
            [sys.executable, "-m", "scripts.train", "--export-dir", str(model_dir)], cwd=ROOT, check=True
        )
    os.environ.update(CREDENTIALS)
    moto = MotoServer(free_port(), steady_gc=True)
    moto.start()
    bench = Bench(moto, model_dir, args.repeat)
    bench.results.update(
        date=time.strftime("%Y-%m-%d"), machine=f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        command=command_line(sys.argv[1:] if argv is None else argv), model_flavor=load_model(str(model_dir), VENVS / "cache" / "flavor").flavor,
    )  # fmt: skip
    try:
        if parts & {"cold", "memory", "size"}:
            say("building the runtime-only virtualenv (.bench/runtime) ...")
            runtime = runtime_venv()
        if "throughput" in parts:
            say(
                f"throughput: batches of {', '.join(map(str, args.sizes))}; interleaved, median of {args.repeat}, fresh moto each"
            )
            bench.throughput(args.sizes, args.per_record_limit)
        if "cold" in parts:
            say(f"cold start: {args.cold_runs} runs each, model fetched from S3 every time")
            bench.cold_start(args.cold_runs, runtime / "bin" / "python")
        if "memory" in parts:
            say("memory: warm container, batches of 1,000")
            bench.memory(runtime / "bin" / "python")
        if "batch" in parts:
            say(f"batch: {args.batch_rows:,} rows, whole processes, {args.batch_runs} runs each, alternating")
            bench.batch(args.batch_rows, args.batch_runs)
        if "size" in parts:
            say("size: installing mlflow + scikit-learn + boto3 for comparison (.bench/full) ...")
            full = full_venv()
            runtime_bytes, full_bytes = site_packages_bytes(runtime), site_packages_bytes(full)
            bench.results["size"] = {
                "runtime_mb": runtime_bytes / 2**20,
                "full_mb": full_bytes / 2**20,
                "ratio": runtime_bytes / full_bytes,
            }
    finally:
        moto.stop()

    full = args.out == RESULTS and parts == set(PARTS) and args.sizes == SIZES
    write_results(bench.results, args.out, quote=full, quote_costs=full)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
