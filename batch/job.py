"""The batch job: score the month an event names, from its input file into its output.

`MonthlyScoring` is built once per container (the model loaded, the templates checked) and
handles one event per invocation; the local backfill (`batch/backfill.py`) calls it in-process.
A month that cannot be scored raises `MonthFailedError`, whose message names the month, the
trigger and the file with the reason (`month 2021-03 (arrival): s3://…/green_tripdata_2021-03.parquet:
missing columns ['trip_distance']: …`): Lambda's asynchronous retries see it, then the
on-failure destination records it with the event. Nothing is written for a month that fails
(batch/output.py): an older output stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from batch.scoring import DEFAULT_CHUNK_ROWS, ScoringError, ScoringSummary, score
from batch.settings import BatchSettings
from batch.triggers import MonthRun, runs_for
from model_service import Log
from stream.model_loading import LoadedModel
from stream.ride_events import TLC_BOUNDS, RideBounds


class MonthFailedError(Exception):
    """A month's file could not be scored or its output written; the message says which and why."""


class MonthlyScoring:
    """Scores the month an event asks for (batch/triggers.py) with one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        settings: BatchSettings,
        log: Log,
        *,
        bounds: RideBounds = TLC_BOUNDS,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        self.model = model
        self.settings = settings
        self.log = log
        self.bounds = bounds
        self.chunk_rows = chunk_rows

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """What the function answers: each month scored, with its counts."""
        return {"months": [self.run(run) for run in runs_for(event, self.settings)]}

    def run(self, run: MonthRun, on_chunk: Callable[[int], object] | None = None) -> dict[str, Any]:
        self.log.info(
            f"scoring {run.month}: {run.input_uri} -> {run.output_uri}",
            extra={"month": str(run.month), "trigger": run.trigger},
        )
        try:
            summary = score(
                self.model,
                run.input_uri,
                run.output_uri,
                self.chunk_rows,
                on_chunk,
                bounds=self.bounds,
                metadata=self.output_metadata(run),
            )
        except ScoringError as error:
            raise MonthFailedError(f"month {run.month} ({run.trigger}): {error}") from error
        result = self.result(run, summary)
        self.log.info("\n".join(summary.lines()), extra=result)
        return result

    def output_metadata(self, run: MonthRun) -> dict[str, str]:
        """The output object's S3 user metadata: which model scored which file. The key stays the
        month's alone, so a re-run with another model replaces the output instead of adding one."""
        metadata = {
            "model-version": self.model.info.version,
            "month": str(run.month),
            "source": run.input_uri,
        }
        if self.model.info.run_id:
            metadata["model-run-id"] = self.model.info.run_id
        return metadata

    def result(self, run: MonthRun, summary: ScoringSummary) -> dict[str, Any]:
        return {
            "month": str(run.month),
            "trigger": run.trigger,
            "input": run.input_uri,
            "output": run.output_uri,
            "model_version": summary.model_version,
            "rows": summary.rows,
            "predicted": summary.predicted,
            "not_predicted": summary.rows - summary.predicted,
            "seconds": round(summary.seconds, 3),
        }
