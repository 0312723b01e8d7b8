"""
``make bench``: apicache's hit path against the framework ceiling (a bare
twisted.web Resource) and nginx ``proxy_cache``, in one run, plus the
coalescing, memory and flood checks (issue 5).

Every HTTP target is driven by ``wrk`` over the same keys with apicache's
headers, in rounds interleaved A B C A B C so that a noisy neighbour hurts
every target alike; medians are reported.  One target is apicache with
``[auth]`` on (issue 21): every hit carries one RS256 token signed by a key
generated here, verified against a key set file, with ``tenant_claim``.

``python bench/run.py --help`` lists the knobs; ``--quick`` is the smoke
test's tiny run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from apicache.harness.signing import SigningKey

HERE = os.path.dirname(os.path.abspath(__file__))
API_KEY = "bench-key"
TENANT = "bench"
AUTH = "Bearer bench-token"
INSTALL_HINT = "apt-get install wrk nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        auth: str = AUTH) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"api-key": API_KEY, "org_id": TENANT, "authorization": auth, **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its children (workers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(k) for k in _children(pid))


def tree_rss(pid: int) -> int:
    """RSS of ``pid`` and its children (workers)."""
    total = rss_bytes(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    for k in kids:
        try:
            total += tree_rss(k)
        except OSError:
            pass
    return total


# -- processes ---------------------------------------------------------------


class Processes:
    """Everything the run started, stopped at the end whatever happens."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], name: str, **kw: Any) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


AUTH_CONFIG = """
[auth]
jwks = "{jwks}"
issuers = ["{issuer}"]
audiences = ["apicache"]
"""


def apicache_config(upstream_port: int, access_log: bool, max_bytes: int = 268435456, jwks: str | None = None,
                    issuer: str = "") -> str:
    # with [auth], the tenant is the verified token's claim too
    claim = 'tenant_claim = "zid"\n' if jwks else ""
    auth = AUTH_CONFIG.format(jwks=jwks, issuer=issuer) if jwks else ""
    return auth + f"""
[server]
{claim}api_keys = ["{API_KEY}"]
access_log = {"true" if access_log else "false"}
shutdown_grace = 2.0

[store]
backend = "memory"
max_bytes = {max_bytes}

[upstream]
base_url = "http://127.0.0.1:{upstream_port}/api"
timeout = 30.0
max_in_flight = 4096

[[routes]]
type = "object"
path = "/server/object(<id>)/header"
upstream = "/object({{id}})/header"
ttl = 3600
"""


def pinned(argv: list[str], cpu: str | None) -> list[str]:
    """``argv`` run on ``cpu`` only (taskset), or as it is without one."""
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def start_apicache(ps: Processes, name: str, upstream_port: int, access_log: bool, workers: int = 1,
                   max_bytes: int = 268435456, jwks: str | None = None, issuer: str = "",
                   cpu: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    path = os.path.join(ps.tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(apicache_config(upstream_port, access_log, max_bytes, jwks, issuer))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [twistd, "-n", "--pidfile=", "apicache", "--config", path,
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024"]
    if workers != 1:
        argv += ["--workers", str(workers)]
    p = ps.start(pinned(argv, cpu), name)
    wait_port(port, p)
    deadline = time.monotonic() + 20
    while get(port, "/healthz")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} is not healthy")
        time.sleep(0.05)
    return p, port


def start_server(ps: Processes, kind: str, latency: float, cpu: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [sys.executable, os.path.join(HERE, "servers.py"), kind, "--port", str(port), "--latency", str(latency)]
    p = ps.start(pinned(argv, cpu), kind)
    wait_port(port, p)
    return p, port


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location /server/ {{
            proxy_pass http://up/api/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_key "$http_org_id $uri $is_args$args";
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(ps: Processes, upstream_port: int, cpu: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = os.path.join(ps.tmp, "nginx.conf")
    user = "user root;" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=ps.tmp, port=port, upstream=upstream_port, user=user))
    argv = [shutil.which("nginx") or "nginx", "-p", ps.tmp, "-c", conf, "-e", os.path.join(ps.tmp, "nginx-error.log")]
    p = ps.start(pinned(argv, cpu), "nginx")
    wait_port(port, p)
    return p, port


# -- wrk ---------------------------------------------------------------------

WRK_SCRIPT = """
local keys = {keys}
local unique = {unique}
local n = 0
local paths = {{}}
for i = 1, keys do paths[i] = "{prefix}" .. (i - 1) .. "{suffix}" end
wrk.headers["api-key"] = "{api_key}"
wrk.headers["org_id"] = "{tenant}"
wrk.headers["authorization"] = "{auth}"
-- conditional requests: each key's own If-None-Match, on top of the headers above
local etags = {etags}
local heads = {{}}
if etags then
  for i = 1, keys do
    heads[i] = {{}}
    for k, v in pairs(wrk.headers) do heads[i][k] = v end
    heads[i]["If-None-Match"] = etags[i]
  end
end
-- a new W3C trace context each request, as a traced client sends
local traced = {traced}
local th = {{}}
for k, v in pairs(wrk.headers) do th[k] = v end
local function r() return math.random(0, 0x7fffffff) end
request = function()
  n = n + 1
  if unique then
    return wrk.format("GET", "{prefix}f" .. tostring(math.random(1, 1000000000)) .. "-" .. n .. "{suffix}")
  end
  local i = (n % keys) + 1
  if etags then return wrk.format("GET", paths[i], heads[i]) end
  if traced then
    th["traceparent"] = string.format("00-%08x%08x%08x%08x-%08x%08x-01", r(), r(), r(), r(), r(), r())
    return wrk.format("GET", paths[i], th)
  end
  return wrk.format("GET", paths[i])
end
"""


def lua_etags(etags: list[bytes] | None) -> str:
    if etags is None:
        return "nil"
    return "{" + ", ".join(json.dumps(e.decode("ascii")) for e in etags) + "}"


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(port: int, prefix: str, suffix: str, keys: int, duration: float, connections: int,
            tmp: str, unique: bool = False, pin: str | None = None, pid: int | None = None, auth: str = AUTH,
            etags: list[bytes] | None = None, traced: bool = False) -> WrkResult:
    """
    Drive ``port`` with wrk over ``keys`` paths, each request carrying
    ``auth``; with ``etags`` (one per key), every request is conditional on
    its key's ETag.
    """
    script = os.path.join(tmp, f"wrk-{port}-{prefix.strip('/').replace('/', '_')}-{int(unique)}-{int(etags is not None)}-{int(traced)}.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT.format(keys=keys, unique="true" if unique else "false", prefix=prefix, suffix=suffix,
                                  api_key=API_KEY, tenant=TENANT, auth=auth, etags=lua_etags(etags),
                                  traced="true" if traced else "false"))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", script, f"http://127.0.0.1:{port}"]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    cpu = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu if pid else 0.0
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    for pat in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        m = re.search(pat, out)
        if m:
            errors += sum(int(g) for g in m.groups())
    return WrkResult(rps, p50, p99, errors, cpu / max(total, 1) * 1e6)


NOISE_LOOP = """
import sys, time
def work():
    s = 0
    for i in range(15000):
        s += i * i
    return s
xs = []
end = time.perf_counter() + float(sys.argv[1])
while time.perf_counter() < end:
    t = time.perf_counter()
    work()
    xs.append(time.perf_counter() - t)
xs.sort()
print(xs[len(xs) // 2], xs[int(len(xs) * 0.99)])
"""


def cpu_noise(cpu: str | None, seconds: float) -> float:
    """
    Return p99 / p50 of one fixed piece of Python work (about 1 ms, a
    batch of 50 hits) timed again and again on ``cpu``: how much the
    machine alone spreads the time of the same work (other tenants of the
    host, frequency changes), the floor under any server's p99 / p50.
    """
    out = subprocess.run(pinned([sys.executable, "-c", NOISE_LOOP, str(seconds)], cpu), capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[1]) / float(out[0])


@dataclass
class Target:
    name: str
    port: int
    pid: int | None = None
    prefix: str = "/server/object("
    suffix: str = ")/header"
    #: conditional requests: each key's ETag (a 304 hit each time)
    etags: list[bytes] | None = None
    results: list[WrkResult] = field(default_factory=list)
    #: the Authorization value each request carries
    auth: str = AUTH
    #: the CPU wrk runs on (the servers measured run on another), or None
    pin: str | None = None
    #: a new traceparent each request
    traced: bool = False

    def wrk(self, keys: int, duration: float, connections: int, tmp: str, measure: bool = True) -> WrkResult:
        return run_wrk(self.port, self.prefix, self.suffix, keys, duration, connections, tmp,
                       pid=self.pid if measure else None, auth=self.auth, etags=self.etags, pin=self.pin,
                       traced=self.traced)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.results)

    def row(self) -> str:
        rps = [r.rps for r in self.results]
        errors = sum(r.errors for r in self.results)
        note = f"  ({errors} errors)" if errors else ""
        spread = f"{self.median('rps'):,.0f} ({min(rps):,.0f}–{max(rps):,.0f})"
        return (f"| {self.name:<38} | {spread:>28} "
                f"| {self.median('p50_ms'):>7.2f} ms | {self.median('p99_ms'):>7.2f} ms "
                f"| {self.median('cpu_us'):>6.1f} µs |{note}")


def paired(a: Target, b: Target, attr: str) -> str:
    """
    ``a``'s ``attr`` over ``b``'s, round by round (the two ran one after
    the other): the median of those ratios and their range, e.g. ``2.51×
    (2.40–2.63)``.  Less swayed by a machine whose speed drifts between
    rounds than the ratio of two medians.
    """
    ratios = [getattr(x, attr) / getattr(y, attr) for x, y in zip(a.results, b.results, strict=True) if getattr(y, attr)]
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


def table(targets: list[Target]) -> str:
    head = f"| {'target':<38} | {'req/s median (min–max)':<28} | {'p50':>10} | {'p99':>10} | {'CPU/req':>9} |"
    rule = "|" + "-" * 40 + "|" + "-" * 30 + "|" + "-" * 12 + "|" + "-" * 12 + "|" + "-" * 11 + "|"
    return "\n".join([head, rule, *(t.row() for t in targets)])


def warm(port: int, prefix: str, suffix: str, keys: int, auth: str = AUTH) -> None:
    for i in range(keys):
        status, _, _ = get(port, f"{prefix}{i}{suffix}", auth=auth)
        if status != 200:
            raise RuntimeError(f"warming {prefix}{i}{suffix} on {port}: {status}")


# -- the checks of item 2 ----------------------------------------------------


async def _one(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\napi-key: {API_KEY}\r\norg_id: {TENANT}\r\n"
        f"authorization: {AUTH}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    cache = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("x-cache:")), "-")
    return status, cache


async def _concurrent(port: int, path: str, n: int) -> list[tuple[int, str] | BaseException]:
    return await asyncio.gather(*(_one(port, path) for _ in range(n)), return_exceptions=True)


def coalescing(port: int, upstream_port: int, n: int, delay_ms: int, key: str = "coalesce") -> dict[str, Any]:
    """
    ``n`` concurrent requests for one cold key whose upstream answer takes
    ``delay_ms``: how many reached the upstream.
    """
    path = f"/server/object({key})/header?delay_ms={delay_ms}"
    before = json.loads(get(upstream_port, "/_calls")[2])["paths"].get(f"/api/object({key})/header", 0)
    results = asyncio.run(_concurrent(port, path, n))
    after = json.loads(get(upstream_port, "/_calls")[2])["paths"].get(f"/api/object({key})/header", 0)
    caches: dict[str, int] = {}
    failed = 0
    for r in results:
        if isinstance(r, BaseException) or r[0] != 200:
            failed += 1
        else:
            caches[r[1]] = caches.get(r[1], 0) + 1
    return {"requests": n, "upstream_calls": after - before, "x_cache": caches, "failed": failed}


def memory_probe(entries: int, vary: bool = False) -> dict[str, Any]:
    """
    Fill the real cache core (CacheRegistry, TenantCache, MemoryStore,
    keys built as the HTTP layer builds them) with ``entries`` 1 KiB
    answers, and measure this process's resident memory before and after.
    With ``vary``, every answer carries ``Vary: accept-language`` and is
    stored as a variant of its key (issue 20): what a variant costs more.
    """
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from apicache.cache.keys import cache_key
    from apicache.cache.registry import CacheRegistry
    from apicache.cache.routes import Route
    from apicache.cache.tenant import CacheResult, FetchRequest
    from apicache.config import RouteConfig
    from apicache.store.interface import ENTRY_OVERHEAD, VARIANT_OVERHEAD
    from apicache.store.memory import MemoryStore
    from apicache.upstream.client import UpstreamResponse

    sys.path.insert(0, HERE)
    from servers import body_for

    class Upstream:
        in_flight = 0

        def fetch(self, path: str, headers: Any, *, tenant: str) -> Any:
            body = body_for(path.encode())
            # fresh objects for every answer, as the real client makes them
            headers = [(b"Content-Type".lower(), b"".join([b"application/", b"json"])), (b"date".lower(), b"".join([b"n", b"ow"]))]
            if vary:
                headers.append((b"vary", b"".join([b"accept-", b"language"])))
            return succeed(UpstreamResponse(200, headers, body))

    config = RouteConfig("object", "/server/object(<id>)/header", "/object({id})/header", ttl=3600,
                         params=("id",), fingerprint="0123456789abcdef")
    route = Route(config)
    store = MemoryStore(1 << 40)
    registry = CacheRegistry(store, Upstream(), Clock(), [config], ("accept", "accept-language"))
    keyed: list[list[bytes] | None] = [None, None]
    forwarded = [(b"accept-language", b"en")] if vary else []
    gc.collect()
    before = rss_bytes(os.getpid())
    body_bytes = 0
    key_bytes = 0
    for i in range(entries):
        raw_id = f"{i:08d}"
        tenant = sys.intern(TENANT.encode().decode())  # as the HTTP layer interns valid tenants
        params = route.decode({"id": raw_id})
        key = cache_key(tenant, config, params, "", keyed)
        cache = registry.cache(tenant, route.type)
        result = cache.get(key, FetchRequest(route.upstream_path(params, ""), forwarded))
        if isinstance(result, CacheResult):
            raise RuntimeError("a cold key was a hit")
        body_bytes += len(body_for(route.upstream_path(params, "").encode()))
        key_bytes += key.size()
    gc.collect()
    after = rss_bytes(os.getpid())
    stats = store.stats()
    if stats["entries"] != entries:
        raise RuntimeError(f"stored {stats['entries']} of {entries}")
    if vary:
        # the variant keys' strings are longer: counted as key bytes
        key_bytes = sum(k.size() for k in store._slots)
    per_entry = (after - before) / entries
    return {
        "entries": entries,
        "rss_bytes": after - before,
        "per_entry": per_entry,
        "body_and_key": (body_bytes + key_bytes) / entries,
        "overhead": per_entry - (body_bytes + key_bytes) / entries,
        "charged_overhead": ENTRY_OVERHEAD + (VARIANT_OVERHEAD if vary else 0),
        "charged_per_entry": stats["bytes"] / entries,
    }


def flood(ps: Processes, upstream_port: int, seconds: float, max_bytes: int, connections: int, tmp: str,
          have_wrk: bool) -> dict[str, Any]:
    """
    Unique keys as fast as they come, against a small budget: peak RSS.
    """
    p, port = start_apicache(ps, "apicache-flood", upstream_port, access_log=False, max_bytes=max_bytes)
    try:
        warm(port, "/server/object(", ")/header", 10)
        gc_pause = 0.2
        time.sleep(gc_pause)
        base = rss_bytes(p.pid)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_bytes(p.pid))
                stop.wait(0.25)

        t = threading.Thread(target=sample)
        t.start()
        try:
            if have_wrk:
                run_wrk(port, "/server/object(", ")/header", 1, seconds, connections, tmp, unique=True)
            else:
                deadline = time.monotonic() + seconds
                i = 0
                while time.monotonic() < deadline:
                    asyncio.run(_flood_batch(port, i, connections))
                    i += connections
        finally:
            stop.set()
            t.join()
        info = json.loads(get(port, "/")[2])
        peak = max(samples + [rss_bytes(p.pid)])
        return {"max_bytes": max_bytes, "rss_start": base, "rss_peak": peak, "growth": peak - base,
                "entries": info["entries"], "bytes": info["bytes"], "evictions": _evictions(port),
                "timeline": [round((x - base) / 1048576, 1) for x in samples[::4]]}
    finally:
        ps.stop(p)


def _evictions(port: int) -> int:
    text = get(port, "/metrics")[2].decode()
    m = re.search(r"^apicache_store_evictions_total (\S+)", text, re.M)
    return int(float(m.group(1))) if m else -1


async def _flood_batch(port: int, start: int, n: int) -> None:
    await asyncio.gather(*(_one(port, f"/server/object(f{start + i})/header") for i in range(n)), return_exceptions=True)


# -- the run -----------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="apicache's benchmark (issue 5)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk round")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (this machine drifts: more short rounds give steadier medians)")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--keys", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.02, help="upstream latency, seconds")
    p.add_argument("--misses", type=int, default=1000, help="concurrent misses on one key")
    p.add_argument("--memory-entries", type=int, default=100_000)
    p.add_argument("--flood-seconds", type=float, default=10.0)
    p.add_argument("--flood-max-bytes", type=int, default=8 << 20)
    p.add_argument("--workers", type=int, default=2, help="also measure --workers N with wrk pinned to one core (0: skip)")
    p.add_argument("--no-wrk", action="store_true", help="behave as if wrk were missing")
    p.add_argument("--no-nginx", action="store_true", help="behave as if nginx were missing")
    p.add_argument("--throughput-only", action="store_true",
                   help="only the wrk table of apicache (access log off and on, a 304 hit) and bare twisted.web")
    p.add_argument("--parts", default="throughput,coalescing,memory,flood,workers",
                   help="comma-separated parts to run (default: all)")
    p.add_argument("--quick", action="store_true", help="the smoke test's tiny run: about a second per part")
    p.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    p.add_argument("--vary", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.vary)))
        return 0
    if args.quick:
        args.duration, args.rounds, args.keys = 1.0, 1, 10
        args.misses, args.memory_entries = 50, 2000
        args.flood_seconds, args.flood_max_bytes = 1.0, 1 << 20
        args.connections = min(args.connections, 10)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    have_wrk = shutil.which("wrk") is not None and not args.no_wrk
    have_nginx = shutil.which("nginx") is not None and not args.no_nginx
    wrk_why = "skipped (--no-wrk)" if args.no_wrk else f"wrk is not installed (install it: {INSTALL_HINT})"
    nginx_why = "skipped (--no-nginx)" if args.no_nginx else f"nginx is not installed (install it: {INSTALL_HINT})"
    have_taskset = shutil.which("taskset") is not None
    print(f"apicache benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"wrk -t1 -c{args.connections}, {args.keys} keys, {args.rounds} rounds of {args.duration:g} s, "
          f"upstream latency {args.latency * 1000:g} ms, 1 KiB JSON bodies", flush=True)
    if not have_wrk:
        print(f"NOTE: {wrk_why}: no throughput table, no workers scaling; the flood uses a Python client.", flush=True)
    if not have_nginx:
        print(f"NOTE: {nginx_why}: no nginx proxy_cache target.", flush=True)

    ok = True
    tmp = tempfile.mkdtemp(prefix="apicache-bench-")
    ps = Processes(tmp)
    try:
        # every server measured runs on one core and wrk on another (the
        # upstream, only warmed from, anywhere): a server's CPU per request
        # is then its own, and wrk never takes turns with it on one core
        server_cpu, wrk_cpu = ("1", "0") if have_taskset and (os.cpu_count() or 1) >= 2 else (None, None)
        print(f"servers measured pinned to CPU {server_cpu}, wrk to CPU {wrk_cpu} (taskset)" if server_cpu
              else "NOTE: not pinned (needs taskset and 2 cores): CPU per request includes taking turns with wrk", flush=True)
        up_proc, up_port = start_server(ps, "upstream", args.latency)
        bare_proc, bare_port = start_server(ps, "bare", args.latency, cpu=server_cpu)
        api_proc, api_port = start_apicache(ps, "apicache", up_port, access_log=False, cpu=server_cpu)
        log_proc, log_port = start_apicache(ps, "apicache-log", up_port, access_log=True, cpu=server_cpu)
        sys.path.insert(0, HERE)
        from servers import body_for, etag_for

        etags = [etag_for(body_for(f"/api/object({i})/header".encode())) for i in range(args.keys)]
        # issue 21: the same hits with [auth] on, every one carrying one token
        signer = SigningKey(issuer="https://idp.example/realms/bench")
        jwks = os.path.join(tmp, "jwks.json")
        signer.write_jwks(jwks)
        auth_proc, auth_port = start_apicache(ps, "apicache-auth", up_port, access_log=False, jwks=jwks,
                                              issuer=signer.issuer, cpu=server_cpu)
        signed = "Bearer " + signer.token(tenant=TENANT, lifetime=24 * 3600)
        # every target gets the same requests, that token included (callers
        # send theirs whether apicache checks it or not).  Each round runs
        # them in this order: what is compared runs side by side
        api = Target("apicache (access log off)", api_port, api_proc.pid, auth=signed)
        logged = Target("apicache (access log on)", log_port, log_proc.pid, auth=signed)
        bare = Target("bare twisted.web Resource", bare_port, bare_proc.pid, auth=signed)
        authed = Target("apicache, [auth] on (one token)", auth_port, auth_proc.pid, auth=signed)
        targets = [api, logged, bare, authed]
        if args.throughput_only:
            have_nginx = False
        nginx_target: Target | None = None
        if have_nginx:
            nginx_proc, nginx_port = start_nginx(ps, up_port, cpu=server_cpu)
            nginx_target = Target("nginx proxy_cache, 1 worker", nginx_port, nginx_proc.pid)
            targets.append(nginx_target)
        targets.append(Target("apicache 304 hit (If-None-Match)", api_port, api_proc.pid, etags=etags, auth=signed))
        # a traced client: a new traceparent (a new request head) each time
        traced = Target("apicache, new traceparent each request", api_port, api_proc.pid, auth=signed, traced=True)
        targets.append(traced)
        up: Target | None = None
        if not args.throughput_only:
            up = Target(f"upstream directly ({args.latency * 1000:g} ms)", up_port, up_proc.pid, prefix="/api/object(")
            targets.append(up)
        for t in targets:
            if t.pid != up_proc.pid:
                t.pin = wrk_cpu
            warm(t.port, t.prefix, t.suffix, args.keys, t.auth)
        status, headers, _ = get(api_port, "/server/object(0)/header")
        if headers.get("x-cache") != "HIT":
            raise RuntimeError(f"apicache did not serve a warm key from its cache: {status} {headers}")
        status, headers, _ = get(api_port, "/server/object(0)/header", {"if-none-match": etags[0].decode()})
        if status != 304:
            raise RuntimeError(f"apicache did not answer a conditional hit 304: {status} {headers}")

        if have_wrk and "throughput" in set(args.parts.split(",")):
            for t in targets if not args.quick else []:  # a short warm-up run each: connections, caches, allocator
                t.wrk(args.keys, 1, args.connections, tmp, measure=False)
            noise = []
            for r in range(args.rounds):
                for t in targets:
                    t.results.append(t.wrk(args.keys, args.duration, args.connections, tmp))
                noise.append(cpu_noise(server_cpu, 0.2 if args.quick else min(2.0, args.duration)))
                print(f"  round {r + 1}/{args.rounds} done", flush=True)
            print()
            print(table(targets))
            print()
            print("Ratios: the median over rounds of each round's ratio (min–max), each taken between runs side by side")
            print(f"apicache / bare twisted.web: {paired(api, bare, 'rps')} req/s (target ≥ 2); "
                  f"CPU per request {paired(api, bare, 'cpu_us')} bare's (target ≤ 0.5)")
            print(f"apicache p99 / p50: {api.median('p99_ms') / api.median('p50_ms'):.2f} (target ≤ 2); "
                  f"the same 1 ms of Python work timed on the servers' CPU: p99 / p50 {statistics.median(noise):.2f}")
            print(f"a new traceparent each request: {paired(traced, bare, 'rps')} bare twisted.web's req/s, "
                  f"CPU per request {paired(traced, bare, 'cpu_us')} bare's")
            print(f"access log on: {paired(logged, api, 'rps')} the req/s of off (target ≥ 0.85)")
            print(f"apicache [auth] on / off: {paired(authed, api, 'rps')} req/s (target ≥ 0.9); "
                  f"CPU per request {paired(authed, api, 'cpu_us')}")
            if args.throughput_only:
                return 0
            if nginx_target is not None:
                print(f"apicache / nginx proxy_cache: {paired(api, nginx_target, 'rps')} req/s")
            assert up is not None
            print(f"latency gain over the upstream called directly: p50 {up.median('p50_ms') / api.median('p50_ms'):.1f}× lower "
                  f"({up.median('p50_ms'):.2f} → {api.median('p50_ms'):.2f} ms), "
                  f"{api.median('rps') / up.median('rps'):.1f}× the req/s")
            if any(r.errors for t in targets for r in t.results):
                ok = False
        print(flush=True)

        parts = set(args.parts.split(","))
        # item 2: coalescing
        if "coalescing" in parts:
            c = coalescing(api_port, up_port, args.misses, delay_ms=2000)
            print(f"{c['requests']} concurrent misses on one key: {c['upstream_calls']} upstream call(s) "
                  f"(X-Cache {c['x_cache']}, {c['failed']} failed) (must be 1)", flush=True)
            ok &= c["upstream_calls"] == 1 and c["failed"] == 0

        # item 2: memory per entry, in a fresh process
        if "memory" in parts:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", str(args.memory_entries)],
                                 capture_output=True, text=True, check=True).stdout
            m = json.loads(out)
            print(f"resident memory for {m['entries']:,} cached 1 KiB entries: {mib(m['rss_bytes'])} "
                  f"({m['per_entry']:.0f} B/entry; body + key {m['body_and_key']:.0f} B; "
                  f"overhead {m['overhead']:.0f} B/entry, charged {m['charged_overhead']} B) (target ≤ 640)", flush=True)

        # item 2: flood of unique keys
        if "flood" in parts:
            f = flood(ps, up_port, args.flood_seconds, args.flood_max_bytes, args.connections, tmp, have_wrk)
            fixed = 24 << 20  # measured: about 20 MiB whatever max_bytes (see README)
            within = f["growth"] <= f["max_bytes"] + fixed
            print(f"flood of unique keys for {args.flood_seconds:g} s, max_bytes {mib(f['max_bytes'])}: "
                  f"RSS {mib(f['rss_start'])} → peak {mib(f['rss_peak'])} (growth {mib(f['growth'])}; "
                  f"store holds {f['entries']:,} entries, {mib(f['bytes'])}, {f['evictions']:,} evicted) → "
                  f"{'within' if within else 'OVER'} max_bytes + {mib(fixed)}", flush=True)
            print(f"  RSS growth each second, MiB: {' '.join(str(x) for x in f['timeline'])}", flush=True)
            ok &= within

        # item 4: workers, wrk pinned to one core
        if args.workers > 1 and "workers" in parts and not have_wrk:
            print(f"NOTE: {wrk_why}: no workers scaling.")
        if args.workers > 1 and "workers" in parts and have_wrk:
            pin = "0" if have_taskset else None
            scale = []
            for n in (1, args.workers):
                proc, port = start_apicache(ps, f"apicache-w{n}", up_port, access_log=False, workers=n)
                # enough requests that every worker has every key
                for _ in range(4 * n):
                    warm(port, "/server/object(", ")/header", args.keys)
                scale.append(Target(f"apicache --workers {n} (wrk on cpu {pin})", port, proc.pid))
                run_wrk(port, "/server/object(", ")/header", args.keys, 1, args.connections, tmp, pin=pin)
            for _ in range(args.rounds):
                for t in scale:
                    t.results.append(run_wrk(t.port, t.prefix, t.suffix, args.keys, args.duration, args.connections, tmp, pin=pin, pid=t.pid))
            print()
            print(table(scale))
            print(f"--workers {args.workers} / --workers 1: {scale[1].median('rps') / scale[0].median('rps'):.2f}× req/s")
            c = coalescing(scale[1].port, up_port, args.misses, delay_ms=2000, key="coalesce-workers")
            print(f"--workers {args.workers}: {c['requests']} concurrent misses on one key: {c['upstream_calls']} upstream "
                  f"call(s) (coalescing is per worker: at most {args.workers}; X-Cache {c['x_cache']}, {c['failed']} failed)")
            ok &= c["upstream_calls"] <= args.workers and c["failed"] == 0
    finally:
        ps.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
