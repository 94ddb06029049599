"""Months, and the path templates that name a month's input and output file.

TLC publishes one trip file per month (`green_tripdata_2021-03.parquet`): a month is the unit of
batch work. A template is a path or s3:// URI with `{year}` and `{month}` fields in Python's
format syntax (`{month:02d}` for a zero-padded month), e.g.
`s3://<bucket>/input/green_tripdata_{year}-{month:02d}.parquet`: formatted, it names a month's
file; read backwards (`month_of`), it tells which month an arriving file holds.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime

FIELDS = ("year", "month")
# The format specs a field may carry, and what they match when a path is read back.
INTEGER_SPEC = re.compile(r"(?P<zero>0?)(?P<width>[1-9]?)d?")


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month: 2021-03."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"month must be 1-12, got {self.month}")
        if not 1 <= self.year <= 9999:
            raise ValueError(f"year must be 1-9999, got {self.year}")

    @classmethod
    def parse(cls, text: str) -> Month:
        """`2021-03` (or `2021-3`)."""
        match = re.fullmatch(r"(\d{4})-(\d{1,2})", text.strip())
        if not match:
            raise ValueError(f"expected a month as YYYY-MM (e.g. 2021-03), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def before(cls, moment: datetime) -> Month:
        """The month before the one `moment` falls in: what a run on 2021-04-01 scores."""
        return cls(moment.year, moment.month).previous()

    def previous(self) -> Month:
        return Month(self.year - 1, 12) if self.month == 1 else Month(self.year, self.month - 1)

    def next(self) -> Month:
        return Month(self.year + 1, 1) if self.month == 12 else Month(self.year, self.month + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def months_from(first: Month, last: Month) -> list[Month]:
    """Every month from `first` to `last`, both included, in order."""
    if last < first:
        raise ValueError(f"the last month ({last}) is before the first ({first})")
    months = [first]
    while months[-1] < last:
        months.append(months[-1].next())
    return months


class MonthTemplate:
    """A path or s3:// URI template with `{year}` and `{month}` fields (each at least once)."""

    def __init__(self, text: str) -> None:
        self.text = text
        pattern = ""
        seen: set[str] = set()
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as error:
            raise ValueError(f"{text!r}: {error}") from None
        for literal, field, spec, conversion in parsed:
            pattern += re.escape(literal)
            if field is None:
                continue
            if field not in FIELDS or conversion:
                raise ValueError(
                    f"{text!r}: unknown field {{{field}}}: a template has {{year}} and {{month}} only"
                )
            integer = INTEGER_SPEC.fullmatch(spec or "")
            if integer is None:
                raise ValueError(
                    f"{text!r}: {{{field}:{spec}}} is not an integer format (e.g. {{month:02d}})"
                )
            digits = rf"\d{{{integer['width']}}}" if integer["zero"] and integer["width"] else r"\d+"
            # A field used twice may be written two ways ({month} and {month:02d}): the second is
            # matched as digits, and month_of checks that the month read writes the path back.
            pattern += f"(?:{digits})" if field in seen else f"(?P<{field}>{digits})"
            seen.add(field)
        missing = [field for field in FIELDS if field not in seen]
        if missing:
            raise ValueError(
                f"{text!r}: no {' and no '.join('{' + m + '}' for m in missing)} field: each month needs a path of its own"
            )
        self.pattern = re.compile(pattern)
        # Everything before the first field: the folder or prefix every month's file is under.
        self.fixed_prefix = parsed[0][0] if parsed else text

    def format(self, month: Month) -> str:
        return self.text.format(year=month.year, month=month.month)

    def month_of(self, path: str) -> Month | None:
        """The month a path names, if the template could have made it (and it is a real month)."""
        match = self.pattern.fullmatch(path)
        if match is None:
            return None
        try:
            month = Month(int(match["year"]), int(match["month"]))
        except ValueError:
            return None
        return month if self.format(month) == path else None

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"MonthTemplate({self.text!r})"
