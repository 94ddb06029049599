"""Load a running web service with POST /predict and report requests/s and latency.

    make serve WORKERS=2 &            # then:
    python -m scripts.bench_web --url http://127.0.0.1:8000 --seconds 10 --clients 4

Client threads send the course's ride (or `--rides N` rides per request) back to back for
`--seconds`. It runs on the same machine as the server, so it competes with it for CPU: read
the numbers as a comparison between settings measured in one session, not as capacity.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


def run_client(url: str, body: bytes, stop_at: float, result: ClientResult) -> None:
    target = urlparse(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            # http.client reconnects by itself after a `Connection: close` (gunicorn's sync worker).
            connection.request("POST", "/predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            connection.close()
            ok = False
        if ok:
            result.latencies.append(time.perf_counter() - started)
        else:
            result.errors += 1
    connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--rides", type=int, default=0, help="send a list of this many rides (0: one ride)")
    args = parser.parse_args(argv)
    body = json.dumps([RIDE] * args.rides if args.rides else RIDE).encode()
    results = [ClientResult() for _ in range(args.clients)]
    stop_at = time.perf_counter() + args.seconds
    threads = [threading.Thread(target=run_client, args=(args.url, body, stop_at, r)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = sorted(latency for r in results for latency in r.latencies)
    errors = sum(r.errors for r in results)
    if not latencies:
        print(f"no successful requests ({errors} errors)")
        return 1
    p99 = latencies[int(len(latencies) * 0.99) - 1] if len(latencies) >= 100 else latencies[-1]
    print(
        f"{len(latencies) / args.seconds:,.0f} requests/s ({len(latencies):,} in {args.seconds:g} s, "
        f"{args.clients} clients, {args.rides or 1} ride(s) each, {errors} errors); "
        f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
