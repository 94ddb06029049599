"""Lambda entry point: `lambda_function.lambda_handler`.

The service (model, clients) is built once per container, during Lambda's init phase: a
model that cannot be loaded, or that fails its self-test, fails the init with an error naming
the URI, not the first batch. The event `{"self_test": true}` (never a Kinesis event) answers
with a new self-test report of the loaded model and writes nothing (docs/model.md).
"""

import gc
from typing import Any

from aws_lambda_powertools import Logger

from model_service import build_service, register_restore_hooks
from stream.self_test import is_self_test_event
from stream.settings import Settings

settings = Settings.from_env()
logger = Logger(service="ride-duration-prediction", level=settings.log_level)
service = build_service(settings, logger)
register_restore_hooks(service)  # SnapStart (zip): renewed in each restored copy
# The imports leave ~150k objects that every full garbage collection would walk again: one
# took 140 ms during a batch here. Frozen, they are never scanned, and batches keep steady.
gc.freeze()


@service.tracing.capture_handler  # X-Ray, when TRACING_ENABLED=true (stream/tracing.py)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if is_self_test_event(event):
        return service.model.self_test().to_dict()
    return service.handle(event, context)
