"""
What one ``socket.recv`` costs by the size it asks for, when a request's
200 bytes are waiting: Python allocates the whole size before the call and
shrinks it after, so a 1 MiB read (a transport's C{bufferSize} set to
C{server.max_write_buffer}) costs far more than Twisted's 64 KiB.

    .venv/bin/python bench/recv_size.py
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time


def per_read(size: int, n: int, message: bytes) -> float:
    a, b = socket.socketpair()
    try:
        start = time.perf_counter()
        for _ in range(n):
            a.send(message)
            b.recv(size)
        return (time.perf_counter() - start) / n * 1e6
    finally:
        a.close()
        b.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    message = b"x" * 200
    sizes = [4096, 16384, 65536, 262144, 1 << 20]
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.rounds):  # interleaved
        for s in sizes:
            times[s].append(per_read(s, args.reads, message))
    print("| recv size | send + recv of 200 bytes, median µs |")
    print("|---|---|")
    for s in sizes:
        print(f"| {s:,} | {statistics.median(times[s]):.2f} |")


if __name__ == "__main__":
    main()
