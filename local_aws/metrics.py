"""The function's metrics, read back from its log: the Embedded Metric Format documents that
CloudWatch would turn into metrics, checked against the format and summed.

    python -m local_aws metrics [LOG]      # default: .local-aws/function.log (make demo, make up)

A document CloudWatch would reject is named with what is wrong with it; the sums are what the
dashboard would show over the same period.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The EMF specification (CloudWatch user guide, "Embedded metric format specification").
UNITS = frozenset(
    {
        *("Seconds", "Microseconds", "Milliseconds", "Percent", "Count", "Count/Second", "None"),
        *(f"{size}{rate}" for size in ("Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes")
          for rate in ("", "/Second")),
        *(f"{size}{rate}" for size in ("Bits", "Kilobits", "Megabits", "Gigabits", "Terabits")
          for rate in ("", "/Second")),
    }
)  # fmt: skip
MAX_METRICS_PER_DIRECTIVE = 100
MAX_DIMENSIONS_PER_SET = 30
MAX_VALUES_PER_METRIC = 100


def emf_documents(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The log lines that are EMF documents (JSON objects with an `_aws` member), parsed."""
    for line in lines:
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and "_aws" in document:
            yield document


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def emf_problems(document: dict[str, Any]) -> list[str]:
    """What CloudWatch would refuse in this document; empty if it is a valid EMF document."""
    meta = document.get("_aws")
    if not isinstance(meta, dict):
        return ["_aws is not an object"]
    problems = []
    if not _is_number(meta.get("Timestamp")):
        problems.append("_aws.Timestamp is not a number of milliseconds")
    directives = meta.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return [*problems, "_aws.CloudWatchMetrics is not a non-empty list"]
    for index, directive in enumerate(directives):
        problems += _directive_problems(document, f"CloudWatchMetrics[{index}]", directive)
    return problems


def _directive_problems(document: dict[str, Any], where: str, directive: dict[str, Any]) -> list[str]:
    problems = []
    namespace = directive.get("Namespace")
    if not isinstance(namespace, str) or not namespace.strip() or len(namespace) > 255:
        problems.append(f"{where}.Namespace must be 1-255 characters, not only spaces")
    for dimensions in directive.get("Dimensions", []):
        if len(dimensions) > MAX_DIMENSIONS_PER_SET:
            problems.append(f"{where}: a dimension set of {len(dimensions)} (at most 30)")
        problems += [
            f"{where}: dimension {name!r} has no string value in the document"
            for name in dimensions
            if not isinstance(document.get(name), str)
        ]
    metrics = directive.get("Metrics")
    if not isinstance(metrics, list) or len(metrics) > MAX_METRICS_PER_DIRECTIVE:
        return [*problems, f"{where}.Metrics must be a list of at most 100"]
    for metric in metrics:
        problems += _metric_problems(document, where, metric)
    return problems


def _metric_problems(document: dict[str, Any], where: str, metric: dict[str, Any]) -> list[str]:
    name = metric.get("Name")
    if not isinstance(name, str) or not 1 <= len(name) <= 1024:
        return [f"{where}: a metric without a valid Name"]
    problems = []
    if metric.get("Unit", "None") not in UNITS:
        problems.append(f"{name}: unit {metric.get('Unit')!r} is not a CloudWatch unit")
    if metric.get("StorageResolution", 60) not in (1, 60):
        problems.append(f"{name}: StorageResolution must be 1 or 60")
    value = document.get(name)
    values = value if isinstance(value, list) else [value]
    if not values or len(values) > MAX_VALUES_PER_METRIC or not all(map(_is_number, values)):
        problems.append(f"{name}: value {value!r} is not a number or a list of 1-100 numbers")
    return problems


def metric_values(document: dict[str, Any]) -> dict[str, list[float]]:
    """Each metric the document declares, with its values (EMF allows a number or a list)."""
    values: dict[str, list[float]] = {}
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for metric in directive["Metrics"]:
            value = document[metric["Name"]]
            values[metric["Name"]] = [float(v) for v in (value if isinstance(value, list) else [value])]
    return values


@dataclass
class MetricSummary:
    """The documents of a log, as CloudWatch would aggregate them over the whole period."""

    documents: int = 0
    invalid: list[str] = field(default_factory=list)  # "document N: problem"
    values: dict[str, list[float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)

    def add(self, document: dict[str, Any]) -> None:
        self.documents += 1
        if problems := emf_problems(document):
            self.invalid += [f"document {self.documents}: {problem}" for problem in problems]
            return
        for directive in document["_aws"]["CloudWatchMetrics"]:
            self.namespaces.add(directive["Namespace"])
            self.units |= {m["Name"]: m.get("Unit", "None") for m in directive["Metrics"]}
        if isinstance(document.get("service"), str):
            self.services.add(document["service"])
        for name, values in metric_values(document).items():
            self.values.setdefault(name, []).extend(values)

    def sum(self, name: str) -> float:
        return math.fsum(self.values.get(name, []))

    def percentile(self, name: str, q: float) -> float | None:
        ordered = sorted(self.values.get(name, []))
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    def average(self, name: str) -> float | None:
        values = self.values.get(name, [])
        return math.fsum(values) / len(values) if values else None


def summarize(lines: Iterable[str]) -> MetricSummary:
    summary = MetricSummary()
    for document in emf_documents(lines):
        summary.add(document)
    return summary


def read_log(path: Path, offset: int = 0) -> MetricSummary:
    """The documents of a function log, from byte `offset` on (a log that later runs append to)."""
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    return summarize(text.splitlines())


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value == int(value) and abs(value) < 1e15 else f"{value:,.2f}"


def table(summary: MetricSummary, source: str) -> str:
    """The metrics as a table: sum, datapoints and the statistics a dashboard would offer."""
    services = ", ".join(sorted(summary.services)) or "—"
    namespaces = ", ".join(sorted(summary.namespaces)) or "—"
    lines = [
        f"{summary.documents:,} EMF documents in {source} (namespace {namespaces}, service {services})"
        + (f"; {len(summary.invalid)} problems:" if summary.invalid else ", all valid"),
        *[f"  {problem}" for problem in summary.invalid[:20]],
    ]
    if not summary.values:
        return "\n".join(lines) + "\n"
    header = ("metric", "unit", "sum", "datapoints", "average", "p50", "p99", "maximum")
    rows = [
        (
            name,
            summary.units.get(name, "None"),
            _number(summary.sum(name)),
            f"{len(values):,}",
            _number(summary.average(name)),
            _number(summary.percentile(name, 50)),
            _number(summary.percentile(name, 99)),
            _number(max(values)),
        )
        for name, values in summary.values.items()
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
