"""Run the pipeline on a laptop: moto for Kinesis and S3, the real Lambda runtime client,
and an event source mapping that behaves like AWS's. Development and test tools only."""
