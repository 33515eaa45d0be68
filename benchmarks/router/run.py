"""Router overhead benchmark: direct vs shoal router vs LiteLLM proxy vs vllm-router vs nginx.

Everything runs on loopback against the same fast fake engine (shoal.testing.fake_engine,
no artificial latency), so what is measured is what each proxy adds.

    python benchmarks/router/run.py --setup          # once: peers into benchmarks/router/out/
    python benchmarks/router/run.py                  # all targets, writes RESULTS.md
    python benchmarks/router/run.py --open-loop      # direct, shoal, shoal+uvloop at 500 req/s,
                                                     # 30 s each in interleaved slices, with CPU use

Measurements, per target:
  - closed loop (wrk, 1 thread, keep-alive): throughput and latency p50/p99 at
    concurrency 1, 16, 64 and 256;
  - open loop at a steady 500 requests/s (loadgen.py; latency measured from each request's
    scheduled send time, so a stall is not hidden by coordinated omission): p50 and p99;
  - streaming: time to first SSE chunk over sequential requests, p50 and p99;
  - for shoal: peak RSS, and RSS with 2000 idle client connections open.

The peers are installed in their own virtualenv (benchmarks/router/out/peers), never as
dependencies of shoal: `pip install 'litellm[proxy]' vllm-router`. nginx and wrk come
from the distribution (apt-get install nginx wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PEERS = OUT / "peers"
RESULTS = HERE / "RESULTS.md"
MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, how are you today?"}], "max_tokens": 16}
# LiteLLM refuses to start without a master key; every target gets the same header.
MASTER_KEY = "sk-bench-0123456789abcdef"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {MASTER_KEY}"}
TARGETS = ("direct", "shoal", "shoal+uvloop", "litellm", "vllm-router", "nginx")
# Every process of the benchmark (engine, proxies, load generators) runs in its own session.
# Linux's autogroup scheduling shares the CPU between sessions first: started from one
# session, the engine, the proxy and the generator would share one slice among themselves
# while each process of other work on the machine had its own, and the proxy would be
# measured starved. In a cluster each container has its own CPU share; so here.
OWN_SESSION = {"start_new_session": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last!r}")


@dataclass
class Target:
    name: str
    url: str  # base, e.g. http://127.0.0.1:P/v1
    process: subprocess.Popen | None = None
    pid: int | None = None
    note: str = ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- starting each target ------------------------------------------------------------------


def start_engine() -> Target:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.testing.fake_engine", "--port", str(port), "--model", MODEL, "--reply",
         "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"],
        stdout=subprocess.DEVNULL, **OWN_SESSION,
    )
    wait_http(f"http://127.0.0.1:{port}/health", process=proc)
    return Target("engine", f"http://127.0.0.1:{port}/v1", proc, proc.pid)


# `--baseline DIR`: the `operator` folder of another checkout of shoal (an older commit),
# measured as the targets `baseline` and `baseline+uvloop` in the same run, side by side.
BASELINE: Path | None = None


def start_shoal(engine: Target, uvloop: bool = False, baseline: bool = False) -> Target:
    port = free_port()
    root = engine.url[: -len("/v1")]
    config = {
        "modelTier": "bench",
        "localTier": "small",
        "tiers": [{"name": "small", "kind": "local", "url": engine.url, "model": MODEL}],
        "engine": {"metricsUrl": f"{root}/metrics"},
        "cache": {"mode": "disabled"},
    }
    path = OUT / ("baseline-router.json" if baseline else "shoal-router.json")
    path.write_text(json.dumps(config))
    env = dict(os.environ)
    if baseline:
        if BASELINE is None:
            raise RuntimeError("the baseline targets need --baseline DIR")
        env["PYTHONPATH"] = f"{BASELINE}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if uvloop:
        # uvloop is optional (the image installs it); here it comes from a private folder
        # so the machine's Python stays as the tests see it.
        site = OUT / "uvloop-site"
        if not (site / "uvloop").exists():
            raise RuntimeError(f"{site} missing: run with --setup")
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", "router", "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, env=env, **OWN_SESSION,
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", process=proc)
    name = ("baseline" if baseline else "shoal") + ("+uvloop" if uvloop else "")
    return Target(name, f"http://127.0.0.1:{port}/v1", proc, proc.pid)


def start_litellm(engine: Target) -> Target:
    binary = PEERS / "bin" / "litellm"
    if not binary.exists():
        raise RuntimeError(f"{binary} missing: run with --setup")
    port = free_port()
    config = OUT / "litellm.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            model_list:
              - model_name: {MODEL}
                litellm_params:
                  model: openai/{MODEL}
                  api_base: {engine.url}
                  api_key: unused
            litellm_settings:
              set_verbose: false
              drop_params: true
            """
        )
    )
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_MASTER_KEY": MASTER_KEY}
    log = open(OUT / "litellm.log", "w")
    proc = subprocess.Popen(
        [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, **OWN_SESSION,
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180, process=proc)
    return Target("litellm", f"http://127.0.0.1:{port}/v1", proc, proc.pid, note="1 worker")


def start_vllm_router(engine: Target) -> Target:
    python = PEERS / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} missing: run with --setup")
    port = free_port()
    root = engine.url[: -len("/v1")]
    log = open(OUT / "vllm-router.log", "w")
    proc = subprocess.Popen(
        [str(python), "-m", "vllm_router.launch_router", "--worker-urls", root, "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"],
        stdout=log, stderr=subprocess.STDOUT, **OWN_SESSION,
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=120, process=proc)
    return Target("vllm-router", f"http://127.0.0.1:{port}/v1", proc, proc.pid)


def start_nginx(engine: Target) -> Target:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx not installed: apt-get install nginx")
    port = free_port()
    upstream = engine.url[len("http://") : -len("/v1")]
    prefix = OUT / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            worker_processes 1;
            daemon off;
            pid {prefix}/nginx.pid;
            error_log {prefix}/logs/error.log warn;
            events {{ worker_connections 8192; }}
            http {{
              access_log off;
              client_body_temp_path {prefix}/tmp/body;
              proxy_temp_path {prefix}/tmp/proxy;
              fastcgi_temp_path {prefix}/tmp/fastcgi;
              uwsgi_temp_path {prefix}/tmp/uwsgi;
              scgi_temp_path {prefix}/tmp/scgi;
              upstream engine {{ server {upstream}; keepalive 512; }}
              server {{
                listen 127.0.0.1:{port};
                location / {{
                  proxy_pass http://engine;
                  proxy_http_version 1.1;
                  proxy_set_header Connection "";
                  proxy_buffering off;
                }}
              }}
            }}
            """
        )
    )
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(prefix)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            **OWN_SESSION)
    wait_http(f"http://127.0.0.1:{port}/health", process=proc)
    return Target("nginx", f"http://127.0.0.1:{port}/v1", proc, proc.pid, note="1 worker process")


STARTERS = {
    "shoal": start_shoal,
    "shoal+uvloop": lambda engine: start_shoal(engine, uvloop=True),
    "baseline": lambda engine: start_shoal(engine, baseline=True),
    "baseline+uvloop": lambda engine: start_shoal(engine, uvloop=True, baseline=True),
    "litellm": start_litellm, "vllm-router": start_vllm_router, "nginx": start_nginx}


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Closed:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    # CPU time the proxy process spent per request (user + system): on a shared machine
    # far steadier than latency, since waiting for a core costs no CPU time.
    cpu_us: float = float("nan")


@dataclass
class Result:
    target: str
    closed: dict[int, Closed] = field(default_factory=dict)
    open_p50_ms: float | None = None
    open_p99_ms: float | None = None
    open_achieved_rps: float | None = None
    open_errors: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    rss_mb: float | None = None
    rss_idle_mb: float | None = None
    error: str | None = None
    note: str = ""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if m is None:
        return float("nan")
    value, unit = m.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, concurrency: int, seconds: int) -> Closed:
    script = OUT / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(BODY)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {MASTER_KEY}"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url + "/chat/completions"],
        capture_output=True, text=True, check=True, **OWN_SESSION,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"(\d+) requests in", out)
    return Closed(rps, p50, p99, errors, int(m.group(1)) if m else 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (nginx's workers) so far, in seconds."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured_wrk(target: Target, concurrency: int, seconds: int) -> Closed:
    before = cpu_seconds(target.pid) if target.pid is not None else None
    got = wrk(target.url, concurrency, seconds)
    if before is not None and got.requests:
        got.cpu_us = (cpu_seconds(target.pid) - before) / got.requests * 1e6  # type: ignore[arg-type]
    return got


def open_loop(url: str, rate: float, seconds: float) -> tuple[float, float, float, int]:
    """Send at a fixed rate regardless of responses (loadgen.py); latency from the scheduled time."""
    import loadgen

    got = loadgen.generate(url + "/chat/completions", json.dumps(BODY).encode(), rate, seconds)
    latencies = sorted(got["fromScheduleMs"])
    return _pct(latencies, 50), _pct(latencies, 99), len(latencies) / got["elapsedSeconds"], sum(got["errors"].values())


async def ttft(url: str, requests: int) -> tuple[float, float]:
    payload = json.dumps({**BODY, "stream": True}).encode()
    samples = []
    async with aiohttp.ClientSession() as session:
        for i in range(requests + 20):
            started = time.perf_counter()
            async with session.post(url + "/chat/completions", data=payload, headers=HEADERS) as r:
                first = await r.content.readany()
                got = time.perf_counter() - started
                assert first.startswith(b"data:"), first[:100]
                await r.read()
            if i >= 20:  # warm-up
                samples.append(got)
    samples.sort()
    return _pct(samples, 50) * 1000, _pct(samples, 99) * 1000


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB of a process and its children."""
    total = peak = 0.0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        peak += int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    return total, peak


def idle_connections_rss(url: str, pid: int, count: int = 2000) -> float:
    host, port = url[len("http://") :].split("/")[0].split(":")
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection((host, int(port))))
        time.sleep(1.0)
        return rss_mb(pid)[0]
    finally:
        for s in socks:
            s.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_rounds(targets: list[Target], results: dict[str, Result], concurrencies: list[int], rounds: int, seconds: int, open_seconds: float, ttft_requests: int) -> None:
    """Interleave the targets (every target at one setting, then the next setting), and
    repeat: drift in the machine's load then hits every target alike. Medians are kept."""
    closed: dict[str, dict[int, list[Closed]]] = {t.name: {c: [] for c in concurrencies} for t in targets}
    opened: dict[str, list[tuple[float, float, float, int]]] = {t.name: [] for t in targets}
    ttfts: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
    live = list(targets)

    def guarded(target: Target, what: str, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a peer failing mid-run is reported
            print(f"  {target.name}: {what} failed: {exc}", flush=True)
            if what.startswith("wrk"):
                results[target.name].error = f"{what}: {exc}"[:300]
                live.remove(target)
            else:  # keep its closed-loop numbers; the open loop or TTFT is reported missing
                results[target.name].note = f"{what} failed: {exc}"[:200]
            return None

    for round_ in range(1, rounds + 1):
        print(f"== round {round_}/{rounds}", flush=True)
        for c in concurrencies:
            for target in list(live):
                got = guarded(target, f"wrk c={c}", lambda: measured_wrk(target, c, seconds))
                if got is not None:
                    closed[target.name][c].append(got)
                    print(f"  {target.name:12s} c={c:<4d} {got.rps:9.0f} req/s  p50 {got.p50_ms:7.2f} ms  p99 {got.p99_ms:7.2f} ms  errors {got.errors}  CPU {got.cpu_us:6.0f} us/req", flush=True)
        for target in list(live):
            got = guarded(target, "open loop", lambda: open_loop(target.url, 500, open_seconds))
            if got is not None:
                opened[target.name].append(got)
                print(f"  {target.name:12s} open 500/s  p50 {got[0]:.2f} ms  p99 {got[1]:.2f} ms  ({got[2]:.0f}/s, errors {got[3]})", flush=True)
        for target in list(live):
            got = guarded(target, "ttft", lambda: asyncio.run(ttft(target.url, ttft_requests)))
            if got is not None:
                ttfts[target.name].append(got)
                print(f"  {target.name:12s} TTFT p50 {got[0]:.2f} ms  p99 {got[1]:.2f} ms", flush=True)

    for target in targets:
        r = results[target.name]
        if r.error:
            continue
        for c in concurrencies:
            runs = closed[target.name][c]
            r.closed[c] = Closed(
                median([x.rps for x in runs]), median([x.p50_ms for x in runs]), median([x.p99_ms for x in runs]),
                sum(x.errors for x in runs), sum(x.requests for x in runs), median([x.cpu_us for x in runs]),
            )
        r.open_p50_ms = median([x[0] for x in opened[target.name]])
        r.open_p99_ms = median([x[1] for x in opened[target.name]])
        r.open_achieved_rps = median([x[2] for x in opened[target.name]])
        r.open_errors = sum(x[3] for x in opened[target.name])
        r.ttft_p50_ms = median([x[0] for x in ttfts[target.name]])
        r.ttft_p99_ms = median([x[1] for x in ttfts[target.name]])
        if target.pid is not None:
            _, r.rss_mb = rss_mb(target.pid)
            if target.name.startswith(("shoal", "baseline")):
                r.rss_idle_mb = idle_connections_rss(target.url, target.pid)


# --- open loop: a fixed arrival rate, targets side by side -----------------------------------


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, summed over its cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


@dataclass
class OpenLoop:
    """Everything one target got in the open-loop mode, summed over its slices."""

    target: str
    from_schedule_ms: list[float] = field(default_factory=list)
    from_send_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    scheduled: int = 0
    wall_s: float = 0.0
    target_cpu_s: float | None = None  # the proxy process; None for direct
    engine_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    machine_busy_s: float = 0.0  # CPU seconds of every process on the machine
    connections: int = 0

    def add(self, got: dict, wall_s: float, target_cpu_s: float | None, engine_cpu_s: float, machine_busy_s: float) -> None:
        self.from_schedule_ms += got["fromScheduleMs"]
        self.from_send_ms += got["fromSendMs"]
        self.late_ms += got["lateMs"]
        for why, n in got["errors"].items():
            self.errors[why] = self.errors.get(why, 0) + n
        self.scheduled += got["scheduled"]
        self.wall_s += wall_s
        if target_cpu_s is not None:
            self.target_cpu_s = (self.target_cpu_s or 0.0) + target_cpu_s
        self.engine_cpu_s += engine_cpu_s
        self.generator_cpu_s += got["cpuSeconds"]
        self.machine_busy_s += machine_busy_s
        self.connections = max(self.connections, got["connections"])

    def pct(self, p: float, values: str = "from_schedule_ms") -> float:
        return _pct(sorted(getattr(self, values)), p)


def open_loop_mode(names: list[str], rate: float, seconds: float, slice_seconds: float, processes: int,
                   uvloop_site: Path | None) -> list[OpenLoop]:
    """Every target at the same fixed arrival rate, in interleaved slices of ``slice_seconds``
    (direct, shoal, ..., then the reverse order, and again) until each had ``seconds``:
    drift in the machine's load then hits every target alike. Latency is from each
    request's scheduled send time. CPU is read around each slice: the proxy's, the
    engine's, the generator's own, and the whole machine's."""
    import loadgen

    engine = start_engine()
    targets: list[Target] = []
    try:
        for name in names:
            targets.append(Target("direct", engine.url) if name == "direct" else STARTERS[name](engine))
        site = str(uvloop_site) if uvloop_site is not None and (uvloop_site / "uvloop").exists() else None
        body = json.dumps(BODY).encode()
        for target in targets:  # warm-up, not recorded
            loadgen.generate(target.url + "/chat/completions", body, rate, 1.0, processes, site)
        results = {t.name: OpenLoop(t.name) for t in targets}
        slices = max(1, round(seconds / slice_seconds))
        for index in range(slices):
            order = targets if index % 2 == 0 else list(reversed(targets))
            for target in order:
                marks: dict[str, float] = {}

                def at_start(target: Target = target, marks: dict[str, float] = marks) -> None:
                    marks["wall"] = time.perf_counter()
                    marks["machine"] = machine_cpu_seconds()[0]
                    marks["engine"] = cpu_seconds(engine.pid)  # type: ignore[arg-type]
                    if target.pid is not None:
                        marks["target"] = cpu_seconds(target.pid)

                got = loadgen.generate(target.url + "/chat/completions", body, rate, slice_seconds, processes, site, at_start)
                wall = time.perf_counter() - marks["wall"]
                target_cpu = cpu_seconds(target.pid) - marks["target"] if target.pid is not None else None
                results[target.name].add(got, wall, target_cpu, cpu_seconds(engine.pid) - marks["engine"],  # type: ignore[arg-type]
                                         machine_cpu_seconds()[0] - marks["machine"])
                r = results[target.name]
                print(f"  slice {index + 1}/{slices} {target.name:12s} p50 {_pct(sorted(got['fromScheduleMs']), 50):6.2f} ms"
                      f"  p99 {_pct(sorted(got['fromScheduleMs']), 99):7.2f} ms  errors {sum(got['errors'].values())}"
                      f"  (so far p99 {r.pct(99):.2f} ms over {len(r.from_schedule_ms)} requests)", flush=True)
        return [results[t.name] for t in targets]
    finally:
        for target in targets:
            target.stop()
        engine.stop()


def open_loop_table(results: list[OpenLoop], rate: float, processes: int) -> str:
    direct = next((r for r in results if r.target == "direct"), None)
    lines = [
        f"| target | requests (errors) | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 / p99 ms over direct "
        f"| proxy CPU: % of a core (us/request) | engine CPU % | generator CPU: % of a core (us/request) "
        f"| machine busy: cores (other work) | sends late p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = len(r.from_schedule_ms)
        added = (f"{r.pct(50) - direct.pct(50):+.2f} / {r.pct(99) - direct.pct(99):+.2f}"
                 if direct is not None and r is not direct else "-")
        proxy = (f"{100 * r.target_cpu_s / r.wall_s:.0f}% ({1e6 * r.target_cpu_s / max(n, 1):.0f})"
                 if r.target_cpu_s is not None else "-")
        own = (r.target_cpu_s or 0.0) + r.engine_cpu_s + r.generator_cpu_s
        lines.append(
            f"| {r.target} | {n} ({sum(r.errors.values())}) | {r.pct(50):.2f} | {r.pct(90):.2f} | {r.pct(99):.2f} "
            f"| {r.pct(99.9):.2f} | {added} | {proxy} | {100 * r.engine_cpu_s / r.wall_s:.0f}% "
            f"| {100 * r.generator_cpu_s / r.wall_s:.0f}% ({1e6 * r.generator_cpu_s / max(n, 1):.0f}) "
            f"| {r.machine_busy_s / r.wall_s:.2f} ({(r.machine_busy_s - own) / r.wall_s:.2f}) "
            f"| {r.pct(50, 'late_ms'):.2f} / {r.pct(99, 'late_ms'):.2f} |"
        )
    lines.append("")
    lines.append(f"{rate:.0f} requests/s open loop, {processes} generator process(es); latency from each request's scheduled send time.")
    errors = {r.target: r.errors for r in results if r.errors}
    if errors:
        lines.append(f"Errors: {errors}")
    return "\n".join(lines)


# --- report --------------------------------------------------------------------------------


def table(results: list[Result], concurrencies: list[int]) -> str:
    direct = next((r for r in results if r.target == "direct" and not r.error), None)
    lines = []
    head = "| target | " + " | ".join(f"c={c} req/s (x direct)" for c in concurrencies) + " | c=1 p50 / p99 ms | c=64 p50 / p99 ms | CPU us/request c=16 |"
    lines.append(head)
    lines.append("|" + "---|" * (len(concurrencies) + 4))
    for r in results:
        if r.error:
            lines.append(f"| {r.target} | " + " | ".join("n/a" for _ in concurrencies) + " | n/a | n/a | n/a |")
            continue
        cells = []
        for c in concurrencies:
            ratio = f" ({r.closed[c].rps / direct.closed[c].rps:.2f})" if direct else ""
            err = f", {r.closed[c].errors} errors" if r.closed[c].errors else ""
            cells.append(f"{r.closed[c].rps:.0f}{ratio}{err}")
        c1, c64 = r.closed.get(1), r.closed.get(64)
        lat1 = f"{c1.p50_ms:.2f} / {c1.p99_ms:.2f}" if c1 else "n/a"
        lat64 = f"{c64.p50_ms:.2f} / {c64.p99_ms:.2f}" if c64 else "n/a"
        c16 = r.closed.get(16)
        cpu = f"{c16.cpu_us:.0f}" if c16 and c16.cpu_us == c16.cpu_us else "-"
        lines.append(f"| {r.target} | " + " | ".join(cells) + f" | {lat1} | {lat64} | {cpu} |")
    lines.append("")
    lines.append("| target | open loop 500/s p50 ms (+ over direct) | p99 ms (+ over direct) | stream TTFT p50 ms (+) | TTFT p99 ms | peak RSS MiB |")
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        if r.error:
            continue
        add50 = f" (+{r.open_p50_ms - direct.open_p50_ms:.2f})" if direct and r is not direct else ""
        add99 = f" (+{r.open_p99_ms - direct.open_p99_ms:.2f})" if direct and r is not direct else ""
        addt = f" (+{r.ttft_p50_ms - direct.ttft_p50_ms:.2f})" if direct and r is not direct else ""
        rss = f"{r.rss_mb:.0f}" if r.rss_mb else "-"
        if r.rss_idle_mb:
            rss += f" ({r.rss_idle_mb:.0f} with 2000 idle connections)"
        errs = f", {r.open_errors} errors" if r.open_errors else ""
        if r.open_p50_ms is None or r.open_p50_ms != r.open_p50_ms:
            lines.append(f"| {r.target} | n/a ({r.note}) | n/a | {r.ttft_p50_ms or float('nan'):.2f} | {r.ttft_p99_ms or float('nan'):.2f} | {rss} |")
            continue
        lines.append(f"| {r.target} | {r.open_p50_ms:.2f}{add50}{errs} | {r.open_p99_ms:.2f}{add99} | {r.ttft_p50_ms:.2f}{addt} | {r.ttft_p99_ms:.2f} | {rss} |")
    failed = [r for r in results if r.error]
    if failed:
        lines.append("")
        for r in failed:
            lines.append(f"- {r.target} could not be measured: `{r.error}`")
    return "\n".join(lines)


def setup() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if not (PEERS / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    subprocess.run([str(PEERS / "bin" / "pip"), "install", "--quiet", "litellm[proxy]", "vllm-router==0.1.17"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(OUT / "uvloop-site"), "uvloop"], check=True)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is missing: apt-get install {tool}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="install the peers into benchmarks/router/out/peers and exit")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each closed-loop run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--open-seconds", type=float, default=None,
                        help="open-loop seconds per target (default 8; 30 with --open-loop)")
    parser.add_argument("--ttft-requests", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument(
        "--baseline", type=Path,
        help="the operator/ folder of another checkout (e.g. an older commit in a temporary worktree): "
        "adds the targets baseline and baseline+uvloop, measured side by side with shoal",
    )
    parser.add_argument(
        "--open-loop", action="store_true",
        help="only the open-loop mode: every target at --rate requests/s for --open-seconds in interleaved "
        "slices of --slice-seconds, with CPU use; prints a table and writes out/open-loop.json, not RESULTS.md",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="arrival rate of the open-loop mode")
    parser.add_argument("--slice-seconds", type=float, default=3.0, help="length of one open-loop slice")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes in the open-loop mode")
    args = parser.parse_args()
    global BASELINE
    if args.baseline is not None:
        BASELINE = args.baseline.resolve()
        if "baseline" not in args.targets:
            args.targets += ",baseline,baseline+uvloop"
    if args.setup:
        setup()
        return 0
    if args.open_loop:
        OUT.mkdir(parents=True, exist_ok=True)
        names = args.targets.split(",") if args.targets != ",".join(TARGETS) else ["direct", "shoal", "shoal+uvloop"]
        load_before = os.getloadavg()
        results = open_loop_mode(names, args.rate, args.open_seconds or 30.0, args.slice_seconds, args.generators, OUT / "uvloop-site")
        load = os.getloadavg()
        report = open_loop_table(results, args.rate, args.generators)
        print(report)
        print(f"load average before {load_before[0]:.1f}, after {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
        (OUT / "open-loop.json").write_text(json.dumps({
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rate": args.rate,
            "generators": args.generators, "loadAverage": {"before": load_before, "after": load},
            "targets": {r.target: {"requests": len(r.from_schedule_ms), "errors": r.errors, "scheduled": r.scheduled,
                                   **{f"p{p}Ms": r.pct(p) for p in (50, 90, 99, 99.9)},
                                   **{f"fromSendP{p}Ms": r.pct(p, "from_send_ms") for p in (50, 99)},
                                   "lateP99Ms": r.pct(99, "late_ms"), "wallSeconds": r.wall_s,
                                   "proxyCpuSeconds": r.target_cpu_s, "engineCpuSeconds": r.engine_cpu_s,
                                   "generatorCpuSeconds": r.generator_cpu_s, "machineBusySeconds": r.machine_busy_s}
                        for r in results},
        }, indent=2))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    names = args.targets.split(",")
    results = {name: Result(name) for name in names}
    engine = start_engine()
    started: list[Target] = []
    try:
        for name in names:
            try:
                target = Target("direct", engine.url) if name == "direct" else STARTERS[name](engine)
                started.append(target)
                results[name].note = target.note
                wrk(target.url, 16, 2)  # warm-up
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                print(f"  {name}: {exc}", flush=True)
                results[name].error = str(exc)[:300]
        run_rounds(started, results, concurrencies, args.rounds, args.seconds, args.open_seconds or 8.0, args.ttft_requests)
    finally:
        for target in started:
            target.stop()
        engine.stop()
    results = [results[name] for name in names]
    report = table(results, concurrencies)
    print(report)
    if not args.no_write:
        load = os.getloadavg()
        RESULTS.write_text(
            "# Router benchmark results\n\n"
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (the machine is shared).\n\n"
            "Rerun: `python benchmarks/router/run.py --setup && python benchmarks/router/run.py`\n\n"
            + report
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
