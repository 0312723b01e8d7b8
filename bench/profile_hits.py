"""
Where a cache hit's time goes: apicache (as ``make bench`` starts it)
driven by ``wrk`` over warm keys while ``py-spy`` samples it, the samples
grouped by what they were doing, per request.

    pip install py-spy   # not a dependency of apicache
    .venv/bin/python bench/profile_hits.py --seconds 8
    .venv/bin/python bench/profile_hits.py --seconds 8 --functions 25 --access-log

Run it from a checkout of another revision (``git worktree``) to compare.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # noqa: E402

#: Python functions whose own time is a system call they make
SYSCALLS = {
    "send_now": "send",
    "untilConcludes": "send",
    "Connection.writeSomeData": "send",
    "EPollReactor.doPoll": "epoll_wait",
    "Connection.doRead": "recv",
    "ReadSizedServer.doRead": "recv",
}


def group(frame: str) -> str:
    """
    Return what a sampled frame (C{name (file:line)}) was doing.
    """
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    if name in SYSCALLS:
        return "system calls (send, recv, epoll_wait)"
    if path.startswith(("twisted/internet/", "twisted/python/")):
        return "the reactor (twisted.internet, twisted.python)"
    if path.startswith(("twisted/web/", "twisted/protocols/")):
        return "twisted.web (HTTPChannel, LineReceiver, Request, Headers)"
    if path.startswith(("klein/", "werkzeug/")):
        return "Klein and werkzeug"
    if "apicache/ops/logs" in path or name in ("ApiSite._access_line", "_random_id", "_draw_trace_ids"):
        return "the access log"
    if name == "parse_head":
        return "apicache: parse_head"
    if path.startswith(("apicache/http/fast", "apicache/_twisted")):
        return "apicache: the fast path's own (serve, answer, FastRequest)"
    if path.startswith("apicache/"):
        return "apicache: checks, resolve, hit, write_result, counts"
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--auth", action="store_true", help="[auth] on, every request carrying one signed token")
    p.add_argument("--functions", type=int, default=0, help="also list the N functions with the most own time")
    args = p.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy) or shutil.which("wrk") is None:
        print("needs py-spy (pip install py-spy) and wrk (apt-get install wrk)")
        return 1
    tmp = tempfile.mkdtemp(prefix="apicache-profile-")
    ps = bench.Processes(tmp)
    try:
        _, up_port = bench.start_server(ps, "upstream", 0.02)
        auth = bench.AUTH
        if args.auth:
            signer = bench.SigningKey(issuer="https://idp.example/realms/bench")
            jwks = os.path.join(tmp, "jwks.json")
            signer.write_jwks(jwks)
            proc, port = bench.start_apicache(ps, "apicache", up_port, access_log=args.access_log, jwks=jwks, issuer=signer.issuer)
            auth = "Bearer " + signer.token(tenant=bench.TENANT, lifetime=3600)
        else:
            proc, port = bench.start_apicache(ps, "apicache", up_port, access_log=args.access_log)
        bench.warm(port, "/server/object(", ")/header", 100, auth)
        out = os.path.join(tmp, "samples.txt")
        sampler = subprocess.Popen(
            [spy, "record", "-p", str(proc.pid), "-r", "1000", "-d", str(int(args.seconds)), "-f", "raw", "-o", out, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        r = bench.run_wrk(port, "/server/object(", ")/header", 100, args.seconds, args.connections, tmp, pid=proc.pid, auth=auth)
        sampler.wait()
        groups: collections.Counter[str] = collections.Counter()
        functions: collections.Counter[str] = collections.Counter()
        total = 0
        with open(out) as f:
            for line in f:
                if not line.strip():
                    continue
                stack, _, count = line.rstrip().rpartition(" ")
                n = int(count)
                total += n
                leaf = stack.split(";")[-1]
                groups[group(leaf)] += n
                functions[leaf.split(":")[0] + ")"] += n
        requests = r.rps * args.seconds
        print(f"{r.rps:,.0f} req/s, {r.cpu_us:.1f} µs CPU per request (the kernel's count); "
              f"py-spy: {total / requests * 1000:.1f} µs on CPU per request, by what it was doing:")
        for name, n in groups.most_common():
            print(f"  {100 * n / total:5.1f}%  {n / requests * 1000:5.1f} µs  {name}")
        for name, n in functions.most_common(args.functions):
            print(f"      {n / requests * 1000:5.2f} µs  {name}")
    finally:
        ps.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
