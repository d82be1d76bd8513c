"""MLLP ingestion throughput: N connections sending ORU^R01 messages of ~10 OBX each, end to end.

Each message goes the whole way: MLLP frame → raw payload stored → mapped → one transaction
writing Patient (merged with the stored one), ServiceRequest, DiagnosticReport, 10 Observations
and the Provenance → ACK back on the socket. A message counts when its AA has been read.

The server side (ingestion service, MLLP listener, embedded SecantusDB as a child process) runs
as Hestia runs it; the senders run in a separate process so they do not share the server's
event loop. Patients are drawn from a pool, each with fixed demographics, as a lab feed sends
them: a message about a known patient repeats what is stored and adds no Patient version.

    python benchmarks/mllp_throughput.py [--messages 2000] [--connections 4] [--obx 10]
                                         [--memory] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.fhir import model
from app.fhir.interactions import Interactions
from app.fhir.search.execute import SearchEngine
from app.ingest.framing import frame
from app.ingest.mllp import MllpSettings
from app.ingest.service import Hl7v2Ingestor
from app.store.client import Database, EmbeddedServer
from app.store.indexes import ensure_search_indexes
from app.store.raw import RawStore
from app.store.versions import Store
from benchmarks.harness import process_cpu

TESTS = [
    ("2345-7", "Glucose", "mg/dL", 70, 140),
    ("2160-0", "Creatinine", "mg/dL", 0.5, 1.4),
    ("3094-0", "Urea nitrogen", "mg/dL", 7, 25),
    ("2951-2", "Sodium", "mmol/L", 130, 150),
    ("2823-3", "Potassium", "mmol/L", 3.0, 5.5),
    ("2075-0", "Chloride", "mmol/L", 95, 110),
    ("2028-9", "Carbon dioxide", "mmol/L", 20, 32),
    ("17861-6", "Calcium", "mg/dL", 8.0, 10.8),
    ("2885-2", "Protein", "g/dL", 6.0, 8.5),
    ("1751-7", "Albumin", "g/dL", 3.2, 5.2),
    ("1975-2", "Bilirubin", "mg/dL", 0.1, 1.3),
    ("6768-6", "Alkaline phosphatase", "U/L", 30, 130),
]


def oru(n: int, obx: int, rng: random.Random, patients: int) -> bytes:
    # A lab feed repeats each patient's demographics as registered: they follow the MRN.
    p = rng.randrange(patients)
    mrn = f"MRN{p:06d}"
    ts = f"2024{1 + n % 12:02d}{1 + n % 28:02d}{n % 24:02d}{n % 60:02d}00"
    lines = [
        f"MSH|^~\\&|LABSYS|GHH LAB|HESTIA|HESTIA|{ts}||ORU^R01^ORU_R01|BENCH{n:08d}|P|2.5.1",
        f"PID|1||{mrn}^^^GHH^MR||DOE{p % 97}^JANE^Q||19{50 + p % 50}0101|F|||"
        f"{p % 900} MAIN ST^^SPRINGFIELD^IL^62701||^PRN^PH^^1^217^555{p % 10000:04d}",
        f"PV1|1|O|LAB^^^GHH||||1234^WELBY^MARCUS|||||||||||V{n:08d}^^^GHH^VN",
        f"OBR|1|PLC{n:08d}|FIL{n:08d}|24323-8^Comprehensive metabolic panel^LN|||{ts}|||||||"
        f"|||||||||{ts}||CH|F",
    ]
    for i in range(obx):
        code, name, unit, low, high = TESTS[i % len(TESTS)]
        value = round(rng.uniform(low * 0.8, high * 1.2), 1)
        flag = "H" if value > high else "L" if value < low else "N"
        lines.append(
            f"OBX|{i + 1}|NM|{code}^{name}^LN||{value}|{unit}^{unit}^UCUM|{low}-{high}|{flag}|||F"
            f"|||{ts}"
        )
    return ("\r".join(lines) + "\r").encode("ascii")


# Sender process


def _senders(port: int, messages: list[bytes], connections: int, out: Any, start_at: float) -> None:
    async def lane(chunk: list[bytes]) -> tuple[list[float], list[str]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        latencies, codes = [], []
        for payload in chunk:
            began = time.perf_counter()
            writer.write(frame(payload))
            await writer.drain()
            ack = await reader.readuntil(b"\x1c\x0d")
            latencies.append(time.perf_counter() - began)
            codes.append(ack.split(b"MSA|", 1)[1][:2].decode())
        writer.close()
        return latencies, codes

    async def main() -> tuple[float, list[float], list[str]]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()
        lanes = await asyncio.gather(*(lane(messages[i::connections]) for i in range(connections)))
        elapsed = time.perf_counter() - began
        return elapsed, [x for la, _ in lanes for x in la], [c for _, cs in lanes for c in cs]

    out.send(asyncio.run(main()))


# Server side


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(42)
    payloads = [oru(n, args.obx, rng, args.patients) for n in range(args.messages + args.warmup)]
    warmup, measured = payloads[: args.warmup], payloads[args.warmup :]
    size = statistics.mean(len(p) for p in measured)
    with tempfile.TemporaryDirectory(prefix="hestia-mllp-bench-") as tmp:
        server = EmbeddedServer.start(":memory:" if args.memory else f"{tmp}/db")
        database = Database(server.uri, "bench")
        try:
            store = Store(database.db)
            # Indexes as `hestia serve` creates them: every insert maintains them.
            types = sorted(model.STORABLE_TYPES)
            await store.ensure_indexes(types)
            await ensure_search_indexes(store, types)
            raw = RawStore(database.db)
            await raw.ensure_indexes()
            engine = SearchEngine(store)
            ingestor = Hl7v2Ingestor(Interactions(store, engine.match_ids), raw)
            listener = ingestor.mllp_server(MllpSettings(port=0, max_frame_bytes=1 << 20))
            await listener.start()
            for payload in warmup:
                await ingestor.ingest(payload, transport="mllp", peer="warmup")

            parent, child = multiprocessing.get_context("spawn").Pipe()
            start_at = time.time() + 2.0  # the child needs a moment to import and connect
            sender = multiprocessing.get_context("spawn").Process(
                target=_senders, args=(listener.port, measured, args.connections, child, start_at)
            )
            sender.start()
            app_cpu, db_cpu = time.process_time(), process_cpu(server.process.pid)
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            elapsed, latencies, codes = await asyncio.to_thread(parent.recv)
            app_cpu = time.process_time() - app_cpu
            db_cpu = process_cpu(server.process.pid) - db_cpu
            if profiler:
                profiler.disable()
            sender.join()
            await listener.stop()
            observations = await store.count("Observation", {})
        finally:
            await database.close()
            server.stop()

    latencies.sort()
    rate = len(measured) / elapsed
    print(
        f"{len(measured)} ORU^R01 ({args.obx} OBX, {size:.0f} bytes) over {args.connections} "
        f"MLLP connections, {'in-memory' if args.memory else 'on-disk'} SecantusDB"
    )
    print(f"  throughput : {rate:.0f} messages/s ({rate * (args.obx + 4):.0f} resources/s)")
    print(
        f"  latency    : p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )
    count = len(measured)
    print(
        f"  CPU/message: app {app_cpu / count * 1000:.1f} ms, database {db_cpu / count * 1000:.1f}"
        f" ms (each on its own core: {count / max(app_cpu, db_cpu, 1e-9):.0f} messages/s)"
    )
    print(f"  ACK codes  : {dict((c, codes.count(c)) for c in sorted(set(codes)))}")
    print(f"  stored     : {observations} Observations")
    print(f"  target     : 300 messages/s -> {'met' if rate >= 300 else 'NOT met'}")
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        print(text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--obx", type=int, default=10)
    parser.add_argument("--patients", type=int, default=500, help="size of the patient pool")
    parser.add_argument("--memory", action="store_true", help="in-memory database")
    parser.add_argument("--profile", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
