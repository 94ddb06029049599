"""The batch function's entry point: `batch.handler.lambda_handler` (batch.Dockerfile's CMD).

One invocation scores one month's file (batch/triggers.py: the schedule, a file's arrival, or
`{"month": "YYYY-MM"}`), so months run in parallel, each in its own invocation. The job (model,
templates) is built once per container, during Lambda's init: a model that cannot be loaded or
fails its self-test, or templates that would make an output start another run, fail the init
with the reason, before any file is touched. `{"self_test": true}` answers with a new self-test
report of the loaded model and touches no file (what `make batch-deploy` checks after a deploy).
"""

from typing import Any

import pyarrow as pa
from aws_lambda_powertools import Logger

from batch.job import MonthlyScoring
from batch.settings import BatchSettings
from model_service import load_configured_model
from stream.self_test import is_self_test_event
from stream.settings import Settings

# The command's allocator (batch/cli.py: ~50 MB lower for 1,000,000 local rows). Here, reading and
# writing S3, a 3,000,000-row month peaked at 334 MB either way (benchmarks/batch_month.py).
pa.set_memory_pool(pa.system_memory_pool())
settings = Settings.from_env()
logger = Logger(service="ride-duration-batch", level=settings.log_level)
job = MonthlyScoring(
    load_configured_model(settings), BatchSettings.from_env(), logger, bounds=settings.ride_bounds
)


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if is_self_test_event(event):
        return job.model.self_test().to_dict()
    return job.handle(event)
