"""Serving load test: serve.py under wrk on loopback, per engine and worker count.

    python -m benchmarks.serve_load                    # outputs/latest, full grid
    python -m benchmarks.serve_load --duration 1 --repeats 1 --concurrency 1 \
        --rows 1 --engines torch --workers 1           # smoke size

For each engine (`serve.engine=torch|onnx`) and worker count it starts serve.py on
a free 127.0.0.1 port, waits until every worker has loaded the model, and for each
request size (rows per POST /predict) and concurrency (open connections) runs the
load client for
`--duration` seconds after a warm-up, `--repeats` times; figures are medians of
the repeats, errors their sum. Bodies are real records from the run's own test
split (target dropped, NaN as null). The same records are also timed in-process:
request validation, `Predictor.predict_records` and the bare engine forward pass,
so the HTTP overhead (latency at concurrency 1 minus in-process time) is visible.
The client shares the CPUs with the server, as a client on the same host would:
`--client wrk` (the default, Debian's `wrk`, for the published figures) or
`--client python` (benchmarks/load_client.py, nothing to install; it saturates
first on a small machine, so its rates are lower bounds). The served default
batches small requests that arrive together (`serve.batching`); with
`--compare-batching` (the default) the ONNX engine (else the first one) on the
fewest workers is measured beside a server with `serve.batching=false` on the
smallest request size, and with `--compare-heap-freeze` (the default) beside
one with `serve.freeze_startup_heap=false` (the tail latency of full garbage
collections) as well: the servers run at once and take turns, run by run, so
that a slower minute on a shared machine falls on each of them alike. Each
server's `/metrics` gives its mean records per engine call, and its log says
whether it froze its heap. Results go to benchmarks/results/serve_load.{json,md}
with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import (
    REPO,
    add_output_arguments,
    machine,
    round_order,
    write_results,
)
from benchmarks.load_client import run_load
from modelsphere.core.devices import select_device
from modelsphere.core.fileio import read_json
from modelsphere.core.provenance import package_versions
from modelsphere.data.cleaning import clean_records
from modelsphere.data.schema import Schema
from modelsphere.inference.predictor import Predictor
from modelsphere.serving.schemas import predict_request_model, record_model

HERE = Path(__file__).resolve().parent
LUA = HERE / "serve_load.lua"
ENGINES = ("torch", "onnx")
CLIENTS = ("wrk", "python")  # --client: Debian's wrk, or benchmarks/load_client.py
SERVING_PACKAGES = ("fastapi", "starlette", "pydantic", "uvicorn", "uvloop")
SERVING_PACKAGES += ("httptools", "onnxruntime")
BODY_POOL = 64  # distinct request bodies per request size
TARGET_P99_MS = 10.0
# issue 15: 1 row at concurrency 8 at >= this share of a constant-JSON route's
# requests/s in the same app and run (the framework's floor)
FLOOR_ROUTE = "/v2/health/live"
TARGET_FLOOR_SHARE = 0.6
FLOOR_CELL = {"rows": 1, "concurrency": 8}
METRIC_LINE = re.compile(r"^(modelsphere_\w+?)(?:\{[^}]*\})? (\S+)$", re.M)
# serving/app.py's log line once a worker has frozen its start-up heap
FROZEN_LINE = re.compile(r"(\d+) start-up objects frozen")
ENGINE_CALLS = "modelsphere_engine_calls_total"
ROWS_SCORED = "modelsphere_rows_predicted_total"
# the settings each server runs with unless a comparison turns one off
SERVER_DEFAULTS = {"batching": True, "freeze_startup_heap": True}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "outputs" / "latest")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=ENGINES)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds, per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, choices=(1, 2))
    parser.add_argument("--timeout", type=int, default=5, help="client, seconds")
    parser.add_argument("--client", choices=CLIENTS, default="wrk")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--inprocess-calls", type=int, default=2000)
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument(
        "--compare-batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure serve.batching=false (one engine and worker count)",
    )
    parser.add_argument(
        "--compare-heap-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure serve.freeze_startup_heap=false (as --compare-batching)",
    )
    add_output_arguments(parser, "serve_load")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# Request bodies from the run's own test split


def test_records(run_dir: Path, meta: dict) -> list:
    """The test split's rows as JSON records: model columns only, NaN as null."""
    data, paths = meta["config"]["data"], meta["config"]["paths"]
    fmt = data.get("format", "parquet")
    candidates = [Path(meta.get("data", {}).get("processed_dir", "")) / f"test.{fmt}"]
    candidates.append(
        REPO / paths["data_dir"] / "processed" / data["name"] / f"test.{fmt}"
    )
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        sys.exit(f"no test split for {run_dir}: looked for {candidates}")
    frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    schema = meta["schema"]
    keep = [schema["id_column"], *schema["numeric"], *schema["categorical"]]
    frame = frame[[c for c in keep if c is not None and c in frame.columns]]
    return json.loads(frame.to_json(orient="records"))  # NaN -> null


def bodies(records: list, rows: int, pool: int = BODY_POOL) -> list:
    """Up to `pool` distinct bodies of `rows` records: consecutive slices of the
    split (cycled when the split is shorter than one request)."""
    count = max(1, min(pool, len(records) // rows))
    return [
        json.dumps(
            {"records": [records[(i * rows + j) % len(records)] for j in range(rows)]},
            separators=(",", ":"),
        )
        for i in range(count)
    ]


# ---------------------------------------------------------------------------
# In-process timings (no HTTP)


def median_seconds(fn, calls: int) -> float:
    for _ in range(max(1, calls // 10)):
        fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process(args, meta: dict, records: list) -> dict:
    """Per engine and request size: request validation (what FastAPI does with the
    body), predict_records, and the bare engine forward pass (median seconds)."""
    torch.set_num_threads(args.threads_per_worker)  # as each server worker does
    device = select_device("cpu", amp=False)
    schema = Schema.from_dict(meta["schema"])
    request_model = predict_request_model(
        record_model(schema, meta["feature_state"]), max(args.rows)
    )
    results = {}
    for engine in args.engines:
        predictor = Predictor.from_run_dir(
            args.run_dir, device, 8192, engine, args.threads_per_worker
        )
        predictor.warm_up()
        results[engine] = {}
        for rows in args.rows:
            body = bodies(records, rows, pool=1)[0]
            batch = json.loads(body)["records"]

            def validate():
                parsed = request_model.model_validate(json.loads(body))
                return [r.model_dump(by_alias=True) for r in parsed.records]

            columns = clean_records(batch, predictor.schema)
            arrays = predictor.transform.transform(columns, len(batch))
            timings = {
                "validate_request": median_seconds(validate, args.inprocess_calls),
                "predict_records": median_seconds(
                    lambda: predictor.predict_records(batch), args.inprocess_calls
                ),
                "engine_forward": median_seconds(
                    lambda: predictor.engine(arrays.numeric, arrays.categorical),
                    args.inprocess_calls,
                ),
            }
            results[engine][str(rows)] = {
                **{f"{k}_ms": v * 1e3 for k, v in timings.items()},
                "engine_forward_us_per_row": timings["engine_forward"] * 1e6 / rows,
                "predict_records_us_per_row": timings["predict_records"] * 1e6 / rows,
            }
            print(
                f"in-process {engine:5s} rows={rows:<3d} "
                + "  ".join(f"{k} {v * 1e3:.3f} ms" for k, v in timings.items())
            )
    return results


# ---------------------------------------------------------------------------
# The server and the load generator


@dataclass
class Server:
    base: str
    port: int
    workers: int
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric_totals(base: str) -> dict:
    """The server's counters of `/metrics`, each summed over its labels."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: Counter = Counter()
    for name, value in METRIC_LINE.findall(text):
        totals[name] += float(value)
    return dict(totals)


def records_per_engine_call(base: str) -> dict:
    """Engine calls and records scored so far, and their ratio (with
    serve.batching, small requests that arrive together share a call)."""
    totals = metric_totals(base)
    calls, rows = totals.get(ENGINE_CALLS, 0.0), totals.get(ROWS_SCORED, 0.0)
    return {
        "engine_calls": calls,
        "records_scored": rows,
        "records_per_engine_call": rows / calls if calls else None,
    }


def http_status(url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@contextmanager
def serving(args, engine: str, workers: int, settings: dict, scratch: Path):
    """serve.py on a free loopback port with the `serve.` `settings` given;
    yields it once every worker has loaded the model; always stops it (and any
    worker left) afterwards."""
    port = free_port()
    name = "_".join([engine, str(workers), *(f"{k}-{v}" for k, v in settings.items())])
    log_path = scratch / f"serve_{name}.log"
    command = [
        sys.executable,
        str(REPO / "serve.py"),
        f"run_dir={args.run_dir.resolve()}",
        f"serve.port={port}",
        f"serve.engine={engine}",
        f"serve.workers={workers}",
        f"serve.threads_per_worker={args.threads_per_worker}",
        f"serve.max_batch_rows={max(1024, max(args.rows))}",
        *(f"serve.{key}={str(value).lower()}" for key, value in settings.items()),
        f"hydra.run.dir={scratch / f'hydra_{name}'}",
    ]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,  # its own process group: workers included
        )
    try:
        deadline = time.monotonic() + args.ready_timeout
        while True:
            loaded = log_path.read_text().count("model ready (")
            if loaded >= workers and http_status(f"{base}/v2/health/ready") == 200:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"serve.py did not become ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield Server(base, port, workers, log_path)
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    try:  # a worker the supervisor failed to stop
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wrk_command() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu) for the "
            "published figures (a native client); or --client python, whose rates "
            "are lower bounds (it saturates first)"
        )
    return wrk


def connections_per_worker(server: Server) -> list | None:
    """Open client connections per server process, largest first (from `ss`):
    uvicorn's workers share one listening socket, and wrk opens every connection
    at once, so one worker may get most of them."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    result = subprocess.run(
        [ss, "-Htnp", "state", "established", f"( sport = :{server.port} )"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    owners = Counter(
        match.group(1)
        for match in map(re.compile(r"pid=(\d+)").search, result.stdout.splitlines())
        if match
    )
    counts = sorted(owners.values(), reverse=True)
    return counts + [0] * (server.workers - len(counts))


def run_client(args, server, bodies_file: Path, concurrency: int, seconds: int):
    """One timed run of the chosen client, summarised as wrk summarises one."""
    if args.client == "python":
        raw, spread = _run_python_client(
            args, server, bodies_file, concurrency, seconds
        )
    else:
        raw, spread = _run_wrk(args, server, bodies_file, concurrency, seconds)
    seconds_run = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    return {
        "requests": raw["requests"],
        "seconds": seconds_run,
        "requests_per_second": raw["requests"] / seconds_run,
        "latency_ms": {k: latency[k] / 1e3 for k in ("p50", "p90", "p95", "p99")}
        | {"mean": latency["mean"] / 1e3, "max": latency["max"] / 1e3},
        "errors": sum(raw["errors"].values()),
        "error_counts": raw["errors"],
        "connections_per_worker": spread,
    }


def _run_python_client(args, server, bodies_file, concurrency, seconds):
    """`bodies_file`: POST /predict with its bodies; None: GET FLOOR_ROUTE."""
    bodies, get = [b""], FLOOR_ROUTE
    if bodies_file is not None:
        text = bodies_file.read_text()
        bodies, get = [line.encode() for line in text.splitlines() if line], None
    result = {}

    def load():
        result.update(
            run_load(server.base, bodies, concurrency, seconds, args.timeout, get)
        )

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(seconds / 2)
    spread = connections_per_worker(server)
    thread.join()
    return result, spread


def _run_wrk(args, server, bodies_file, concurrency: int, seconds: int):
    """`bodies_file`: POST /predict with its bodies; None: GET FLOOR_ROUTE."""
    threads = min(args.threads, concurrency)
    command = [wrk_command(), f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s"]
    command += [f"--timeout={args.timeout}s", "-s", str(LUA), server.base]
    command += ["--", str(bodies_file)] if bodies_file else ["--", "GET", FLOOR_ROUTE]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(seconds / 2)
        spread = connections_per_worker(server)
        stdout, stderr = process.communicate(timeout=seconds + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    line = next(
        (x for x in stdout.splitlines() if x.startswith("SERVE_LOAD_JSON ")), None
    )
    if process.returncode != 0 or line is None:
        sys.exit(f"wrk failed ({process.returncode}):\n{stdout}{stderr}")
    return json.loads(line.split(" ", 1)[1]), spread


def load_cells(
    args,
    servers: list,
    bodies_file,
    body: str,
    rows: int,
    conc: int,
    with_floor: bool = False,
):
    """Per server, one cell: a warm-up each, then `--repeats` rounds of one
    client run per server in turn, each round starting one server further on
    (so that no server always runs first, when the machine is freshest);
    medians of rates and latencies. `with_floor`: each run is paired with a run
    of the same server's constant-JSON route at the same concurrency, right
    before it or right after (in turn, round by round), each server's floor
    cell. Returns (cells, floors); floors is empty without `with_floor`."""
    for server in servers:
        status = http_status(f"{server.base}/predict", body.encode())
        if status != 200:
            sys.exit(f"the {rows}-row request of the load answered {status}")
        if with_floor and http_status(f"{server.base}{FLOOR_ROUTE}") != 200:
            sys.exit(f"GET {FLOOR_ROUTE}, the floor, did not answer 200")
        if args.warmup > 0:
            run_client(args, server, bodies_file, conc, args.warmup)
            if with_floor:
                run_client(args, server, None, conc, args.warmup)
    runs = [[] for _ in servers]
    floor_runs = [[] for _ in servers]
    for repeat in range(args.repeats):
        for (own, floor_own), server in round_order(
            list(zip(zip(runs, floor_runs), servers)), repeat
        ):
            loads = [(own, bodies_file)]
            if with_floor:
                loads.insert(repeat % 2, (floor_own, None))
            for into, bodies in loads:
                started = time.monotonic()  # (the turns are in the results)
                run = run_client(args, server, bodies, conc, args.duration)
                into.append({**run, "started_monotonic": started})
    cells = [cell_of(rows, conc, own) for own in runs]
    floors = [cell_of(0, conc, own) for own in floor_runs] if with_floor else []
    return cells, floors


def cell_of(rows: int, conc: int, runs: list) -> dict:
    rps = statistics.median(r["requests_per_second"] for r in runs)
    latency = {
        key: statistics.median(r["latency_ms"][key] for r in runs)
        for key in runs[0]["latency_ms"]
    }
    return {
        "rows": rows,
        "concurrency": conc,
        "requests_per_second": rps,
        "rows_per_second": rps * rows,
        "latency_ms": latency,
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "runs": runs,
    }


# ---------------------------------------------------------------------------
# Summaries


def find(cells: list, **where):
    return next(
        (c for c in cells if all(c.get(k) == v for k, v in where.items())), None
    )


def targets(configs: list) -> list:
    """The issue's targets, per engine and worker count (None: not measured)."""
    out = []
    for config in configs:
        label = f"{config['engine']}, {config['workers']} worker(s)"
        cell = find(config["cells"], **FLOOR_CELL)
        p99 = cell["latency_ms"]["p99"] if cell else None
        out.append(
            {
                "target": f"p99 < {TARGET_P99_MS:g} ms, 1 row, concurrency 8",
                "config": label,
                "value": p99,
                "met": None if p99 is None else p99 < TARGET_P99_MS,
            }
        )
        share = floor_share(config)
        out.append(
            {
                "target": f"requests/s >= {TARGET_FLOOR_SHARE:g}x GET {FLOOR_ROUTE}'s"
                " (constant JSON, same app and run), 1 row, concurrency 8",
                "config": label,
                "value": share,
                "unit": "x",
                "met": None if share is None else share >= TARGET_FLOOR_SHARE,
            }
        )
        at_32 = [c for c in config["cells"] if c["concurrency"] == 32]
        errors = sum(c["errors"] for c in at_32) if at_32 else None
        out.append(
            {
                "target": "no errors at concurrency 32 (every request size)",
                "config": label,
                "value": errors,
                "met": None if errors is None else errors == 0,
            }
        )
    return out


def engine_comparison(configs: list) -> dict:
    """onnx/torch requests/s per cell and their geometric mean, per worker count."""
    out = {}
    for workers in sorted({c["workers"] for c in configs}):
        torch_ = find(configs, engine="torch", workers=workers)
        onnx = find(configs, engine="onnx", workers=workers)
        if not (torch_ and onnx):
            continue
        ratios = {}
        for cell in onnx["cells"]:
            other = find(
                torch_["cells"], rows=cell["rows"], concurrency=cell["concurrency"]
            )
            if other:
                key = f"rows={cell['rows']},c={cell['concurrency']}"
                ratios[key] = cell["requests_per_second"] / other["requests_per_second"]
        geo = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
        out[str(workers)] = {
            "onnx_over_torch_requests_per_second": ratios,
            "geometric_mean": geo,
            "faster": "onnx" if geo > 1 else "torch",
        }
    return out


def faster_engine(configs: list) -> dict | None:
    """The verdict for serve.engine's default, from the fewest workers measured
    with both engines: with more workers the spread of wrk's connections over
    the workers (see connections_per_worker) moves requests/s more than the
    engine does."""
    comparison = engine_comparison(configs)
    if not comparison:
        return None
    workers = min(comparison, key=int)
    return {
        "engine": comparison[workers]["faster"],
        "workers": int(workers),
        "onnx_over_torch_geometric_mean": comparison[workers]["geometric_mean"],
    }


def http_overhead(configs: list, inproc: dict) -> dict:
    """p50 at concurrency 1 minus the in-process time of the same request."""
    out = {}
    for config in configs:
        if config["workers"] != 1:
            continue
        for cell in config["cells"]:
            if cell["concurrency"] != 1:
                continue
            timing = inproc[config["engine"]][str(cell["rows"])]
            in_ms = timing["validate_request_ms"] + timing["predict_records_ms"]
            out[f"{config['engine']},rows={cell['rows']}"] = {
                "p50_ms": cell["latency_ms"]["p50"],
                "in_process_ms": in_ms,
                "http_overhead_ms": cell["latency_ms"]["p50"] - in_ms,
            }
    return out


def serving_versions(client: str) -> dict:
    out = package_versions(*SERVING_PACKAGES)
    if client == "wrk":
        wrk = subprocess.run(
            [wrk_command(), "--version"], capture_output=True, text=True
        )
        out["wrk"] = (wrk.stdout + wrk.stderr).split("[")[0].replace("wrk", "").strip()
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.client == "wrk":
        wrk_command()  # before any work: say how to install it, or to use --client
    meta = read_json(args.run_dir / "model.json", "model metadata")
    records = test_records(args.run_dir, meta)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load = {"start": os.getloadavg()}
    inproc = in_process(args, meta, records)
    configs, unbatched, unfrozen = [], None, None
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        scratch = Path(tmp)
        files, first = {}, {}
        for rows in args.rows:
            pool = bodies(records, rows)
            files[rows] = scratch / f"bodies_{rows}.jsonl"
            files[rows].write_text("\n".join(pool) + "\n")
            first[rows] = pool[0]
        compared = compared_server(args)
        sized = dict(files=files, first=first, scratch=scratch)
        for workers in args.workers:
            for engine in args.engines:
                load[f"{engine},workers={workers}"] = os.getloadavg()
                # the compared server beside the same server with one setting
                # off, on the smallest size: run for run, taking turns
                variants = [({}, args.rows)]
                if (engine, workers) == compared:
                    variants += [
                        (off, args.rows[:1]) for off in compared_settings(args)
                    ]
                group = measure(args, engine, workers, variants, **sized)
                configs.append(group[0])
                for config in group[1:]:
                    if not config["batching"]:
                        unbatched = config
                    if not config["freeze_startup_heap"]:
                        unfrozen = config
    load["end"] = os.getloadavg()
    payload = {
        "benchmark": "serve_load",
        "date": started,
        "machine": machine(),
        "load_average": load,
        "versions": serving_versions(args.client),
        "setup": {
            "run_dir": str(args.run_dir.resolve()),
            "model": meta["config"]["data"]["name"],
            "model_spec": meta["model_spec"],
            "test_records": len(records),
            "endpoint": "POST /predict",
            "engines": list(args.engines),
            "workers": args.workers,
            "threads_per_worker": args.threads_per_worker,
            "rows": args.rows,
            "concurrency": args.concurrency,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "repeats": args.repeats,
            "client": args.client,
            "wrk_threads": args.threads,
            "client_timeout_seconds": args.timeout,
            "inprocess_calls": args.inprocess_calls,
            "compare_batching": args.compare_batching,
            "compare_heap_freeze": args.compare_heap_freeze,
        },
        "in_process": inproc,
        "results": configs,
        "unbatched": unbatched,
        "batching_comparison": batching_comparison(configs, unbatched),
        "unfrozen": unfrozen,
        "heap_freeze_comparison": heap_freeze_comparison(configs, unfrozen),
        "http_overhead": http_overhead(configs, inproc),
        "engine_comparison": engine_comparison(configs),
        "faster_engine": faster_engine(configs),
        "targets": targets(configs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, args.name, payload, render_markdown)
    for target in payload["targets"]:
        verdict = {None: "not measured", True: "met", False: "MISSED"}[target["met"]]
        print(f"{target['config']}: {target['target']}: {target['value']} ({verdict})")


def compared_server(args) -> tuple | None:
    """The (engine, workers) also measured with serve.batching=false and with
    serve.freeze_startup_heap=false."""
    if not (args.compare_batching or args.compare_heap_freeze):
        return None
    engine = "onnx" if "onnx" in args.engines else args.engines[0]
    return engine, min(args.workers)


def compared_settings(args) -> list:
    """The settings turned off, one server each, beside the compared server."""
    off = []
    if args.compare_batching:
        off.append({"batching": False})
    if args.compare_heap_freeze:
        off.append({"freeze_startup_heap": False})
    return off


def measure(args, engine, workers, variants, files, first, scratch) -> list:
    """One server per variant ((`serve.` settings over SERVER_DEFAULTS, request
    sizes)), all started together: every size at every concurrency, the servers
    that measure a cell taking turns run by run (so a slower minute on these
    shared machines falls on each of them alike), the floor cell's runs each
    paired with a run of the same server's constant-JSON route (its floor);
    then each server's records per engine call and whether its workers froze
    their heaps (from its log)."""
    configs, labels = [], []
    for overrides, _ in variants:
        settings = {**SERVER_DEFAULTS, **overrides}
        configs.append({"engine": engine, "workers": workers, **settings, "cells": []})
        labels.append(engine + "".join(f" {k}={v}" for k, v in settings.items()))
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                serving(args, engine, workers, {**SERVER_DEFAULTS, **o}, scratch)
            )
            for o, _ in variants
        ]
        for rows in args.rows:
            for conc in args.concurrency:
                taking = [i for i, (_, sizes) in enumerate(variants) if rows in sizes]
                cells, floors = load_cells(
                    args,
                    [servers[i] for i in taking],
                    files[rows],
                    first[rows],
                    rows,
                    conc,
                    with_floor={"rows": rows, "concurrency": conc} == FLOOR_CELL,
                )
                for i, cell in zip(taking, cells):
                    configs[i]["cells"].append(cell)
                    print(summary_line(labels[i], workers, cell), flush=True)
                for i, floor in zip(taking, floors):
                    configs[i]["floor"] = floor
                    print(f"{labels[i]}: GET {FLOOR_ROUTE}: {floor}", flush=True)
        for config, server in zip(configs, servers):
            config["engine_calls"] = records_per_engine_call(server.base)
            config["frozen_objects"] = [
                int(n) for n in FROZEN_LINE.findall(server.log.read_text())
            ]
    return configs


def paired_cells(configs: list, twin: dict) -> tuple:
    """The default server `twin` was measured beside (same engine and workers)
    and, per cell of the twin's, ("rows=R,c=C", the default's cell, the twin's)."""
    default = find(configs, engine=twin["engine"], workers=twin["workers"])
    pairs = [
        (
            f"rows={cell['rows']},c={cell['concurrency']}",
            find(default["cells"], rows=cell["rows"], concurrency=cell["concurrency"]),
            cell,
        )
        for cell in twin["cells"]
    ]
    return default, pairs


def batching_comparison(configs: list, unbatched: dict | None) -> dict | None:
    """Batched over unbatched requests/s per concurrency, same engine, workers
    and request size; and each side's share of its own server's floor."""
    if unbatched is None:
        return None
    batched, pairs = paired_cells(configs, unbatched)
    ratios = {
        key: other["requests_per_second"] / cell["requests_per_second"]
        for key, other, cell in pairs
    }
    return {
        "engine": unbatched["engine"],
        "workers": unbatched["workers"],
        "batched_over_unbatched_requests_per_second": ratios,
        "floor_share": {
            "batched": floor_share(batched),
            "unbatched": floor_share(unbatched),
        },
        "records_per_engine_call": {
            "batched": batched["engine_calls"]["records_per_engine_call"],
            "unbatched": unbatched["engine_calls"]["records_per_engine_call"],
        },
    }


def heap_freeze_comparison(configs: list, unfrozen: dict | None) -> dict | None:
    """Per concurrency, the frozen and the unfrozen server's p99 and p95
    latency and the frozen/unfrozen requests/s; each side's floor share."""
    if unfrozen is None:
        return None
    frozen, pairs = paired_cells(configs, unfrozen)
    cells = {}
    for key, other, cell in pairs:
        cells[key] = {
            "p99_ms": {
                "frozen": other["latency_ms"]["p99"],
                "unfrozen": cell["latency_ms"]["p99"],
            },
            "p95_ms": {
                "frozen": other["latency_ms"]["p95"],
                "unfrozen": cell["latency_ms"]["p95"],
            },
            "frozen_over_unfrozen_requests_per_second": other["requests_per_second"]
            / cell["requests_per_second"],
        }
    return {
        "engine": unfrozen["engine"],
        "workers": unfrozen["workers"],
        "cells": cells,
        "floor_share": {
            "frozen": floor_share(frozen),
            "unfrozen": floor_share(unfrozen),
        },
    }


def floor_share(config: dict) -> float | None:
    """The floor cell's requests/s over the constant-JSON route's, same server:
    the median of the paired runs' ratios (each run of the cell beside its own
    floor run, so a faster or slower minute of the machine falls on both)."""
    shares = paired_shares(config)
    return round(statistics.median(shares), 3) if shares else None


def paired_shares(config: dict) -> list:
    """Per pair of runs (the floor cell's and its floor's), the cell's
    requests/s over the floor's; empty where either was not measured."""
    cell, floor = find(config["cells"], **FLOOR_CELL), config.get("floor")
    if not (cell and floor):
        return []
    return [
        own["requests_per_second"] / constant["requests_per_second"]
        for own, constant in zip(cell["runs"], floor["runs"])
    ]


def summary_line(engine: str, workers: int, cell: dict) -> str:
    latency = cell["latency_ms"]
    return (
        f"{engine} w={workers} rows={cell['rows']:<3d} c={cell['concurrency']:<3d}"
        f" {cell['requests_per_second']:9,.0f} req/s {cell['rows_per_second']:10,.0f}"
        f" rows/s  p50 {latency['p50']:7.2f}  p95 {latency['p95']:7.2f}"
        f"  p99 {latency['p99']:7.2f} ms  errors {cell['errors']}"
    )


def render_markdown(payload: dict) -> str:
    setup, m = payload["setup"], payload["machine"]
    lines = [
        f"# Serving load test (serve.py under {_client(setup)}, loopback)",
        "",
        f"{payload['date']}, {m['processor']}, {m['platform']}, {m['cpu_count']} "
        f"CPUs ({m['usable_cpus']} usable), Python {m['python']}, torch "
        f"{payload['versions']['torch']}, onnxruntime "
        f"{payload['versions']['onnxruntime']}, uvicorn "
        f"{payload['versions']['uvicorn']}, fastapi {payload['versions']['fastapi']},"
        f" {_client(setup)} {payload['versions'].get('wrk', '')}. Load average (1, 5,"
        " 15 min) at the start "
        f"{_load(payload['load_average']['start'])}, at the end "
        f"{_load(payload['load_average']['end'])}.",
        "",
        f"Model `{setup['model']}` (hidden {setup['model_spec']['hidden_sizes']}), "
        f"{setup['endpoint']} with real test-split records; "
        f"{setup['threads_per_worker']} intra-op thread per worker; "
        f"{_client_threads(setup)} on the same CPUs; each figure is the "
        f"median of {setup['repeats']} runs of {setup['duration_seconds']} s after "
        f"{setup['warmup_seconds']} s of warm-up; errors are summed over the runs "
        "(socket errors, timeouts and statuses > 399).",
        "",
    ]
    for config in payload["results"]:
        lines += config_section(config)
    comparison = payload.get("batching_comparison")
    if comparison:
        lines += config_section(payload["unbatched"])
        shares = comparison["floor_share"]
        per_call = comparison["records_per_engine_call"]
        lines += [
            f"`serve.batching` ({comparison['engine']}, workers="
            f"{comparison['workers']}): batched/unbatched requests/s "
            + ", ".join(
                f"{k} {v:.2f}x"
                for k, v in comparison[
                    "batched_over_unbatched_requests_per_second"
                ].items()
            )
            + f"; share of the floor at {_floor_cell()}: batched "
            f"{_share(shares['batched'])}, unbatched {_share(shares['unbatched'])};"
            f" records per engine call over the whole server run: batched "
            f"{_per_call(per_call['batched'])}, unbatched "
            f"{_per_call(per_call['unbatched'])}.",
            "",
        ]
    freeze = payload.get("heap_freeze_comparison")
    if freeze:
        lines += config_section(payload["unfrozen"])
        shares = freeze["floor_share"]
        lines += [
            f"`serve.freeze_startup_heap` ({freeze['engine']}, workers="
            f"{freeze['workers']}): p99 ms frozen/unfrozen "
            + ", ".join(
                f"{k} {v['p99_ms']['frozen']:.1f}/{v['p99_ms']['unfrozen']:.1f}"
                for k, v in freeze["cells"].items()
            )
            + "; frozen/unfrozen requests/s "
            + ", ".join(
                f"{k} {v['frozen_over_unfrozen_requests_per_second']:.2f}x"
                for k, v in freeze["cells"].items()
            )
            + f"; share of the floor at {_floor_cell()}: frozen "
            f"{_share(shares['frozen'])}, unfrozen {_share(shares['unfrozen'])}.",
            "",
        ]
    lines += [
        "## In-process (no HTTP), median of " f"{setup['inprocess_calls']} calls",
        "",
        "| engine | rows | validate request ms | predict_records ms "
        "| engine forward ms | forward µs/row |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for engine, sizes in payload["in_process"].items():
        for rows, t in sizes.items():
            lines.append(
                f"| {engine} | {rows} | {t['validate_request_ms']:.3f} "
                f"| {t['predict_records_ms']:.3f} | {t['engine_forward_ms']:.3f} "
                f"| {t['engine_forward_us_per_row']:.1f} |"
            )
    if payload["http_overhead"]:
        lines += [
            "",
            "HTTP + framework overhead at concurrency 1 (p50 minus in-process "
            "validation + predict_records):",
            "",
            "| engine, rows | p50 ms | in-process ms | overhead ms |",
            "|---|---:|---:|---:|",
        ]
        for key, item in payload["http_overhead"].items():
            lines.append(
                f"| {key} | {item['p50_ms']:.2f} | {item['in_process_ms']:.2f} "
                f"| {item['http_overhead_ms']:.2f} |"
            )
    for workers, comparison in payload["engine_comparison"].items():
        lines += [
            "",
            f"Engines at workers={workers}: onnx/torch requests/s, geometric mean "
            f"{comparison['geometric_mean']:.2f}x ("
            + ", ".join(
                f"{k} {v:.2f}x"
                for k, v in comparison["onnx_over_torch_requests_per_second"].items()
            )
            + f"); faster: **{comparison['faster']}**.",
        ]
    verdict = payload["faster_engine"]
    if verdict:
        lines += [
            "",
            f"**Faster engine: {verdict['engine']}** (onnx/torch requests/s "
            f"{verdict['onnx_over_torch_geometric_mean']:.2f}x at workers="
            f"{verdict['workers']}, where the comparison is not confounded by how "
            "the connections spread over the workers).",
        ]
    lines += ["", "## Targets", "", "| target | config | value | met |"]
    lines.append("|---|---|---:|---|")
    for t in payload["targets"]:
        value = "not measured" if t["value"] is None else t["value"]
        if isinstance(value, float):
            value = f"{value:.2f}{t.get('unit', ' ms')}"
        met = {None: "not measured", True: "yes", False: "**no**"}[t["met"]]
        lines.append(f"| {t['target']} | {t['config']} | {value} | {met} |")
    return "\n".join(lines) + "\n"


def config_section(config: dict) -> list:
    """One server's table, its floor and its records per engine call."""
    several = config["workers"] > 1
    switch = {True: "on", False: "off"}
    batching = switch[config.get("batching", True)]
    frozen = switch[config.get("freeze_startup_heap", True)]
    lines = [
        f"## engine={config['engine']}, workers={config['workers']}, "
        f"serve.batching={batching}, serve.freeze_startup_heap={frozen}",
        "",
        "| rows/request | concurrency | requests/s | rows/s | p50 ms | p95 ms "
        "| p99 ms | errors |" + (" connections per worker, each run |" * several),
        "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" * several),
    ]
    for cell in config["cells"]:
        lat = cell["latency_ms"]
        spread = ", ".join(
            "/".join(map(str, run["connections_per_worker"] or ["?"]))
            for run in cell["runs"]
        )
        lines.append(
            f"| {cell['rows']} | {cell['concurrency']} "
            f"| {cell['requests_per_second']:,.0f} | {cell['rows_per_second']:,.0f}"
            f" | {lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} "
            f"| {cell['errors']} |" + (f" {spread} |" * several)
        )
    floor = config.get("floor")
    if floor:
        lat = floor["latency_ms"]
        lines += [
            "",
            f"The framework's floor, GET `{FLOOR_ROUTE}` (constant JSON, same "
            f"server, each run beside one of the {_floor_cell()} runs): "
            f"{floor['requests_per_second']:,.0f} "
            f"requests/s at concurrency {floor['concurrency']}, p50 "
            f"{lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, errors "
            f"{floor['errors']}. Share of the floor, the median of the paired "
            f"runs' ratios: {_share(floor_share(config))} (each pair "
            f"{', '.join(f'{r:.2f}x' for r in paired_shares(config))}).",
        ]
    calls = config.get("engine_calls")
    if calls and calls["records_per_engine_call"] is not None:
        lines += [
            "",
            f"Records per engine call over this server's run (`/metrics`): "
            f"{calls['records_per_engine_call']:.2f} ({calls['records_scored']:,.0f}"
            f" records in {calls['engine_calls']:,.0f} calls).",
        ]
    if "frozen_objects" in config:
        counts = config["frozen_objects"]
        lines += [
            "",
            f"Start-up objects frozen, per worker (its log): "
            f"{', '.join(f'{n:,}' for n in counts) if counts else 'none'}.",
        ]
    if several:
        lines += [
            "",
            "The workers share one listening socket and wrk opens all its "
            "connections at once, so one worker may hold most of them (sampled "
            "with `ss` mid-run): a run with every connection on one worker "
            "scores like a single worker.",
        ]
    lines.append("")
    return lines


def _floor_cell() -> str:
    return f"{FLOOR_CELL['rows']} row, concurrency {FLOOR_CELL['concurrency']}"


def _share(value) -> str:
    return "not measured" if value is None else f"{value:.2f}x"


def _per_call(value) -> str:
    return "not measured" if value is None else f"{value:.2f}"


def _client(setup: dict) -> str:
    return "wrk" if setup.get("client", "wrk") == "wrk" else "the Python load client"


def _client_threads(setup: dict) -> str:
    if setup.get("client", "wrk") == "wrk":
        return f"wrk with {setup['wrk_threads']} thread(s)"
    return "the Python client with one thread per connection"


def _load(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
