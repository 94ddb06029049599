"""Batch mode: TLC trip files in, a file of predictions out, by the same model path as the stream.

- `scoring.py`: `score(model, input_uri, output_uri)`, one file, local or s3://.
- `validation.py`: the rides' rules on whole columns, with the stream's reasons.
- `output.py`: an output that appears only when the run succeeds.
- `cli.py`: `python -m batch INPUT OUTPUT` (`make score`).
"""
