"""The batch job's configuration: where a month's file is read and where its predictions go.

The model and the ride bounds are the function's own variables (`stream.settings.Settings`);
these two are batch's alone (README, Configuration). Kept here rather than in stream/settings.py:
the stream's package knows nothing of months and templates, and imports nothing of batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from batch.months import Month, MonthTemplate
from stream.settings import ConfigurationError

DEFAULT_INPUT_TEMPLATE = "data/input/green_tripdata_{year}-{month:02d}.parquet"
# A folder per month, Hive-style (year=2021/month=03): pyarrow, Spark and Athena read the output
# prefix as one table with year and month columns.
DEFAULT_OUTPUT_TEMPLATE = "data/output/year={year}/month={month:02d}/predictions.parquet"
# Months the templates are tried on when checked against each other.
PROBE_MONTHS = (Month(2021, 1), Month(2021, 12))


@dataclass(frozen=True)
class BatchSettings:
    input_template: MonthTemplate
    output_template: MonthTemplate

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BatchSettings:
        env = os.environ if env is None else env
        result = cls(
            input_template=_template(env, "BATCH_INPUT_TEMPLATE", DEFAULT_INPUT_TEMPLATE),
            output_template=_template(env, "BATCH_OUTPUT_TEMPLATE", DEFAULT_OUTPUT_TEMPLATE),
        )
        result.check()
        return result

    def check(self) -> None:
        """An output must never be taken for an input: when a file arriving under the input
        prefix starts a run, an output there would start another, and so on, for ever."""
        for month in PROBE_MONTHS:
            output = self.output_template.format(month)
            if output == self.input_template.format(month) or self.input_template.month_of(output):
                raise ConfigurationError(
                    f"BATCH_OUTPUT_TEMPLATE {self.output_template} names files that BATCH_INPUT_TEMPLATE "
                    f"{self.input_template} reads ({output}): put the outputs under another prefix"
                )
        # The arrival trigger watches the input file's folder (InputPrefix in infra/batch.yaml).
        input_prefix = self.input_template.fixed_prefix.rpartition("/")[0] + "/"
        if input_prefix != "/" and self.output_template.fixed_prefix.startswith(input_prefix):
            raise ConfigurationError(
                f"BATCH_OUTPUT_TEMPLATE {self.output_template} is under the input prefix {input_prefix}: "
                "a file written there would start another run; put the outputs under another prefix"
            )


def _template(env: Mapping[str, str], name: str, default: str) -> MonthTemplate:
    text = env.get(name) or default
    try:
        return MonthTemplate(text)
    except ValueError as error:
        raise ConfigurationError(f"{name}: {error}") from None
