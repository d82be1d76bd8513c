"""History paging over the 101,000-resource store of search_latency (load it first with
`python -m benchmarks.search_latency --storage DIR --load-only`).

Times the first page and the pages after it of system history, type history (with and
without `_since`) and instance history, through a real `hestia serve` on that store. The first
page a server process serves for a scope may walk back through a quiet stretch to the store's
bulk-loaded burst (see app/fhir/history_windows.py); it is reported on its own.

    python -m benchmarks.history_paging --storage /tmp/sb [--pages 5] [--rounds 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx

from app.store.client import EmbeddedServer
from benchmarks.harness import percentile, running_hestia

QUERIES: list[tuple[str, str, dict[str, str]]] = [
    ("system history", "/_history", {}),
    ("type history", "/Observation/_history", {}),
    ("type history _since", "/Observation/_history", {"_since": "2020-01-01"}),
]


def time_pages(
    http: httpx.Client, path: str, params: dict[str, str], args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """Milliseconds of each first page, and of each page followed after one."""
    firsts: list[float] = []
    nexts: list[float] = []
    for _ in range(args.rounds):
        began = time.perf_counter()
        bundle = http.get(path, params={**params, "_count": str(args.count)}).json()
        firsts.append((time.perf_counter() - began) * 1000)
        for _ in range(args.pages):
            link = [x["url"] for x in bundle["link"] if x["relation"] == "next"]
            if not link:
                break
            began = time.perf_counter()
            bundle = http.get(link[0]).json()
            nexts.append((time.perf_counter() - began) * 1000)
    return firsts, nexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="a store loaded by search_latency")
    parser.add_argument("--pages", type=int, default=5, help="pages followed after the first")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--audit", choices=("on", "off"), default="off")
    args = parser.parse_args()
    if not Path(args.storage).exists():
        raise SystemExit(f"{args.storage} does not exist: load it with search_latency first")
    server = EmbeddedServer.start(args.storage)
    try:
        with (
            running_hestia(mongodb_uri=server.uri, audit=args.audit == "on") as base,
            httpx.Client(base_url=base, timeout=300) as http,
        ):
            patient = http.get("/Patient", params={"_count": 1}).json()["entry"][0]["resource"]
            instance: tuple[str, str, dict[str, str]] = (
                "instance history",
                f"/Patient/{patient['id']}/_history",
                {},
            )
            print(f"history pages of {args.count} over HTTP, audit {args.audit}:")
            for label, path, params in [*QUERIES, instance]:
                firsts, nexts = time_pages(http, path, params, args)
                print(
                    f"  {label:22s} very first {firsts[0]:8.1f} ms; first page p50 "
                    f"{percentile(firsts, 0.5):6.1f} ms; next pages p50 "
                    f"{percentile(nexts, 0.5):6.1f} ms, p99 {percentile(nexts, 0.99):6.1f} ms "
                    f"(n={len(nexts)})"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
