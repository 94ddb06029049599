"""Batch mode: TLC trip files in, a file of predictions out, by the same model path as the stream.

- `scoring.py`: `score(model, input_uri, output_uri)`, one file, local or s3://.
- `validation.py`: the rides' rules on whole columns, with the stream's reasons.
- `output.py`: an output that appears only when the run succeeds.
- `cli.py`: `python -m batch INPUT OUTPUT` (`make score`).

The batch function (batch.Dockerfile, infra/batch.yaml): one month's file per invocation.

- `handler.py`: the entry point, `batch.handler.lambda_handler`.
- `job.py`: `MonthlyScoring`, a month's run from its input into its output.
- `triggers.py`: which month an event names (the schedule, a file's arrival, a request).
- `months.py`: months, and the path templates that name a month's files.
- `settings.py`: BATCH_INPUT_TEMPLATE and BATCH_OUTPUT_TEMPLATE.
"""
