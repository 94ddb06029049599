"""`make bench`'s batch part: one TLC-shaped parquet file scored by three whole processes.

    python -m benchmarks.batch course INPUT OUTPUT MODEL_DIR   # the course's way (baseline)
    python -m benchmarks.batch limit INPUT OUTPUT MODEL_DIR    # the least the job needs (limit)
    python -m benchmarks.batch peak COMMAND...                 # wall time and peak RSS of a command

- **ours**: `python -m batch INPUT OUTPUT --model-uri MODEL_DIR --no-progress`.
- **course**: the course's batch `score.py`, as it is written there: the whole file into pandas,
  `PU_DO` as strings, `to_dict(orient="records")`, `mlflow.pyfunc.load_model`, one predict,
  `to_parquet`. Two departures, both in the baseline's favour: the ride id is the row's position
  (the course draws a uuid4 per ride) and no row is dropped. Through pyfunc's own `predict`, a
  model with a signature is given a pandas DataFrame, which a DictVectorizer cannot read: as the
  cold-start baseline does (benchmarks/children.py), the dicts go to `get_raw_model()`.
- **limit**: read the three feature columns, build the model's sparse input from the
  vectorizer's vocabulary (stream/features.py), predict, write the predictions: no validation,
  no other column, no chunks. What this machine needs at least, imports included.

The parent runs them in turn, in alternating order, and measures each process from spawn to exit
(wall) and its peak resident memory (`wait4`'s rusage, through `peak`). The children import nothing at module
level beyond the standard library: their imports are part of what is measured. A child prints
`RESULT {json}` with its own phases.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FEATURE_COLUMNS = ["PULocationID", "DOLocationID", "trip_distance"]
DESIGNS = ("ours", "course", "limit")


def trips_file(folder: Path, rows: int, seed: int = 42) -> Path:
    """A TLC-shaped month (`scripts.train.synthetic_trips`), written once and kept."""
    path = folder / f"trips-{rows}-{seed}.parquet"
    if not path.exists():
        from scripts.train import synthetic_trips  # noqa: PLC0415 - pandas: only when making it

        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        synthetic_trips(rows, month=3, seed=seed).to_parquet(partial)
        partial.rename(path)
    return path


def command(design: str, trips: Path, output: Path, model_dir: Path) -> list[str]:
    if design == "ours":
        return [sys.executable, "-m", "batch", str(trips), str(output), "--model-uri", str(model_dir),
                "--no-progress"]  # fmt: skip
    return [sys.executable, "-m", "benchmarks.batch", design, str(trips), str(output), str(model_dir)]


def measure(cmd: list[str], cwd: Path, log: Path) -> dict[str, Any]:
    """Wall time and peak RSS of one whole process (through `peak`); its RESULT line, if any."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "MODEL_CACHE_DIR": str(log.parent / "cache")}
    wrapped = [sys.executable, "-m", "benchmarks.batch", "peak", *cmd]
    with log.open("w") as out:
        done = subprocess.run(wrapped, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    lines = log.read_text().splitlines()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}:\n" + "\n".join(lines[-40:]))
    found = {
        prefix: json.loads(line.removeprefix(prefix))
        for line in lines
        for prefix in ("MEASURED ", "RESULT ")
        if line.startswith(prefix)
    }
    # batch scoring's summary: "scored 1,000,000 rows of ... in 0.5 s (...)": its scoring phase.
    scored = [re.search(r" in ([0-9.]+) s \(", line) for line in lines if line.startswith("scored ")]
    phases = {"scoring_s": float(scored[-1][1])} if scored and scored[-1] else {}
    return {**found["MEASURED "], **found.get("RESULT ", {}), **phases}


def peak(cmd: list[str]) -> int:
    """Run `cmd`; print its wall time and peak RSS. Linux keeps a process's RSS high-water mark
    across exec, so a child spawned by the benchmark itself (hundreds of MB) would report the
    benchmark's RSS if larger: spawned from this stdlib-only process (~10 MB), it reports its own."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    print("MEASURED " + json.dumps({"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}), flush=True)
    return process.returncode


def run(root: Path, model_dir: Path, rows: int, runs: int, say: Any = print) -> dict[str, Any]:
    """`runs` measurements of each design, in alternating order; medians, and whether the three
    outputs hold the same predictions, to the bit."""
    work = root / ".bench" / "batch"
    trips = trips_file(work, rows)
    samples: dict[str, list[dict[str, Any]]] = {design: [] for design in DESIGNS}
    for index in range(runs + 1):  # the first round warms the page cache and is discarded
        order = DESIGNS if index % 2 == 0 else tuple(reversed(DESIGNS))
        for design in order:
            output = work / f"out-{design}.parquet"
            result = measure(command(design, trips, output, model_dir), root, work / f"{design}.log")
            if index:
                samples[design].append(result)
        if index:
            say(f"  run {index}/{runs}: " + " · ".join(
                f"{d} {samples[d][-1]['wall_s']:.2f} s {samples[d][-1]['peak_rss_mb']:.0f} MB" for d in DESIGNS
            ))  # fmt: skip
    medians = {
        design: {key: statistics.median(s[key] for s in found) for key in found[0] if isinstance(found[0][key], float)}
        for design, found in samples.items()
    }  # fmt: skip
    ours, course, limit = (medians[design] for design in DESIGNS)
    return {
        "rows": rows,
        "runs": runs,
        **medians,
        "wall_vs_course": ours["wall_s"] / course["wall_s"],
        "memory_vs_course": ours["peak_rss_mb"] / course["peak_rss_mb"],
        "wall_vs_limit": ours["wall_s"] / limit["wall_s"],
        "predictions_equal": same_predictions(*(work / f"out-{design}.parquet" for design in DESIGNS)),
    }


def same_predictions(*outputs: Path) -> bool:
    import pyarrow.parquet as pq  # noqa: PLC0415

    columns = [pq.read_table(path, columns=["predicted_duration"]).column(0) for path in outputs]
    first = columns[0].to_numpy()
    return all(column.null_count == 0 for column in columns) and all(
        column.to_numpy().tobytes() == first.tobytes() for column in columns[1:]
    )


# -- the children -----------------------------------------------------------------------------


def course(trips: str, output: str, model_dir: str) -> dict[str, float]:
    import mlflow.pyfunc  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    imported = time.perf_counter()
    df = pd.read_parquet(trips)
    df["ride_id"] = range(len(df))
    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    dicts = df[["PU_DO", "trip_distance"]].to_dict(orient="records")
    prepared = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_dir)
    loaded = time.perf_counter()
    predicted = model.get_raw_model().predict(dicts)
    predicted_at = time.perf_counter()
    result = pd.DataFrame()
    result["ride_id"] = df["ride_id"]
    result["pickup_datetime"] = df["lpep_pickup_datetime"]
    result["PULocationID"] = df["PULocationID"]
    result["DOLocationID"] = df["DOLocationID"]
    result["trip_distance"] = df["trip_distance"]
    result["predicted_duration"] = predicted
    result["actual_duration"] = (df.lpep_dropoff_datetime - df.lpep_pickup_datetime).dt.total_seconds() / 60
    result["model_version"] = model.metadata.run_id
    result.to_parquet(output, index=False)
    return {
        "imports_s": imported - STARTED,
        "read_and_dicts_s": prepared - imported,
        "load_model_s": loaded - prepared,
        "predict_s": predicted_at - loaded,
        "write_s": time.perf_counter() - predicted_at,
    }


def limit(trips: str, output: str, model_dir: str) -> dict[str, float]:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    import yaml  # noqa: PLC0415

    from stream.features import COURSE_FEATURES, RideColumns, vocabulary_shortcut  # noqa: PLC0415

    flavor = yaml.safe_load((Path(model_dir) / "MLmodel").read_text())["flavors"]["sklearn"]
    with (Path(model_dir) / flavor["pickled_model"]).open("rb") as handle:
        pipeline = pickle.load(handle)  # noqa: S301 - the benchmark's own model
    shortcut = vocabulary_shortcut(pipeline, pipeline.steps[0][1], COURSE_FEATURES)
    if shortcut is None:
        raise SystemExit("the model takes no shortcut: the limit is measured for the course pipeline")
    loaded = time.perf_counter()
    table = pq.read_table(trips, columns=FEATURE_COLUMNS)
    rides = RideColumns(*(table.column(name).to_numpy() for name in FEATURE_COLUMNS))
    read = time.perf_counter()
    matrix = shortcut.build(rides)
    built = time.perf_counter()
    predicted = shortcut.rest.predict(matrix)
    predicted_at = time.perf_counter()
    pq.write_table(pa.table({"predicted_duration": predicted}), output)
    return {
        "imports_and_load_s": loaded - STARTED,
        "read_s": read - loaded,
        "build_s": built - read,
        "predict_s": predicted_at - built,
        "write_s": time.perf_counter() - predicted_at,
    }


STARTED = time.perf_counter()


def main() -> int:
    design, *arguments = sys.argv[1:]
    if design == "peak":
        return peak(arguments)
    phases = {"course": course, "limit": limit}[design](*arguments)
    print("RESULT " + json.dumps(phases), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
