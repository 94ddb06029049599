"""The stream path's building blocks, each a module named for what it does.

`model_service.py` (at the root, beside the entry point `lambda_function.py`) strings them
together: decode and validate (`ride_events`), predict with the model (`model_loading`), write
with PutRecords (`kinesis_output`) within the invocation's time budget (`deadline`), skip what
this container already wrote (`redelivery`), configured from the environment (`settings`). The web
service and batch scoring share the ride validation and the model path.
"""
