"""
``make run``: apicache with ``./apicache.toml`` on loopback and, while
``APICACHE_UPSTREAM_URL`` is unset (or empty), the bundled demo upstream in
front of which it serves, so that a newcomer's first ``curl`` is a ``MISS``
and the second a ``HIT``.

Ctrl-C or SIGTERM stops the daemon (SIGTERM: its orderly shutdown), then
the demo upstream, and exits 0, so that ``make`` reports no error.  Both
children run in process groups of their own: a Ctrl-C at the terminal
reaches only ``make`` and this launcher, and the daemon is told to stop
once, by this launcher.  A second Ctrl-C (a second or more after the
first) kills them at once.

``python bench/run_local.py --port 8080 [--config apicache.toml] [-- TWISTD-ARGS]``
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from types import FrameType

from apicache.harness.launchers import free_port

#: The demo upstream, run as ``python -m DEMO_MODULE --port N``.
DEMO_MODULE = "apicache.harness.demo"
#: Exit statuses of a daemon that stopped in order: stock twistd re-raises
#: the signal that stopped it (SPEC §1).
CLEAN = (0, -signal.SIGTERM, -signal.SIGINT)
#: Seconds within which a second signal is the same stop, not a second Ctrl-C.
REPEAT_WINDOW = 1.0


def _die_with_parent() -> None:
    # Runs in the child before exec: put it in a process group of its own
    # (Ctrl-C goes to this launcher only) and have Linux send it SIGTERM if
    # the launcher itself is killed outright, so no demo upstream outlives it.
    os.setpgid(0, 0)
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Launcher:
    """
    The daemon and, optionally, the demo upstream, started and stopped
    together.
    """

    def __init__(self, port: int, config: str, interface: str, twistd_args: Sequence[str]) -> None:
        self.port = port
        self.config = config
        self.interface = interface
        self.twistd_args = list(twistd_args)
        self.demo: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.stop_requested = 0
        self.first_signal = 0.0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """
        Ask the daemon to stop (the first time), or kill both (the second).
        """
        now = time.monotonic()
        if self.stop_requested and now - self.first_signal < REPEAT_WINDOW:
            # the same stop delivered twice (to the process group and by make)
            return
        self.stop_requested += 1
        self.first_signal = self.first_signal or now
        if self.daemon is None or self.daemon.poll() is not None:
            return
        if self.stop_requested == 1:
            print("\nstopping apicache (orderly shutdown; Ctrl-C again to kill it)", file=sys.stderr, flush=True)
            self.daemon.send_signal(signal.SIGTERM)
        else:
            self.daemon.kill()

    def start_demo(self) -> str:
        """
        Start the demo upstream on a free port; return its URL.

        @raise RuntimeError: it exited or did not listen within 10 s.
        """
        port = free_port()
        self.demo = subprocess.Popen(
            [sys.executable, "-m", DEMO_MODULE, "--port", str(port)], preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + 10
        while not _accepts("127.0.0.1", port):
            if self.demo.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the demo upstream did not start (status {self.demo.poll()})")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    def start_daemon(self, env: dict[str, str]) -> None:
        """
        Start ``twistd -n apicache`` from this Python's environment.
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [
            twistd, "-n", "--pidfile=", "apicache",
            "--config", self.config,
            "--listen", f"tcp:{self.port}:interface={self.interface}",
            *self.twistd_args,
        ]
        self.daemon = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)

    def wait_ready(self, api_key: str) -> None:
        """
        Wait until ``/healthz`` answers, then say how to try it; return at
        once if the daemon exits or a stop is asked for.
        """
        assert self.daemon is not None
        url = f"http://127.0.0.1:{self.port}"
        while self.daemon.poll() is None and not self.stop_requested:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        if self.daemon.poll() is not None or self.stop_requested:
            return
        key = f"-H 'api-key: {api_key}' " if api_key else ""
        print(
            f"\napicache on {url} (development api-key: {api_key or '-'}); try, twice:\n"
            f"    curl -i {key}-H 'org_id: acme' -H 'authorization: Bearer demo-token' "
            f"'{url}/server/object(42)/header'\n"
            "Ctrl-C stops it.\n",
            file=sys.stderr,
            flush=True,
        )

    def wait(self) -> int:
        """
        Wait until the daemon exits (stopping it if the demo upstream dies);
        stop the demo upstream; return this launcher's exit status.
        """
        assert self.daemon is not None
        while True:
            try:
                status = self.daemon.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                if self.demo is not None and self.demo.poll() is not None and not self.stop_requested:
                    print(f"the demo upstream exited ({self.demo.returncode}): stopping apicache", file=sys.stderr, flush=True)
                    self.stop_requested = 1
                    self.daemon.send_signal(signal.SIGTERM)
        self.stop_demo()
        if status in CLEAN and self.stop_requested <= 1:
            return 0 if self.demo is None or self.demo.returncode in CLEAN else 1
        return status if status > 0 else 1

    def stop_demo(self) -> None:
        """
        Stop the demo upstream (if running) and reap it.
        """
        if self.demo is None:
            return
        if self.demo.poll() is None:
            self.demo.send_signal(signal.SIGINT)
            try:
                self.demo.wait(5)
            except subprocess.TimeoutExpired:
                self.demo.kill()
                self.demo.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run ``make run``; return the exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8080))
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--config", default="apicache.toml")
    p.add_argument("twistd_args", nargs="*", help="more apicache options, after --")
    args = p.parse_args(argv)

    launcher = Launcher(args.port, args.config, args.interface, args.twistd_args)
    signal.signal(signal.SIGINT, launcher.on_signal)
    signal.signal(signal.SIGTERM, launcher.on_signal)
    env = dict(os.environ)
    try:
        if not env.get("APICACHE_UPSTREAM_URL"):
            print("APICACHE_UPSTREAM_URL is unset: starting the bundled demo upstream", file=sys.stderr, flush=True)
            env["APICACHE_UPSTREAM_URL"] = launcher.start_demo()
        if launcher.stop_requested:
            return 0
        launcher.start_daemon(env)
        launcher.wait_ready(env.get("APICACHE_API_KEY", ""))
        return launcher.wait()
    except RuntimeError as e:
        print(f"make run: {e}", file=sys.stderr)
        return 1
    finally:
        if launcher.daemon is not None and launcher.daemon.poll() is None:
            launcher.daemon.kill()
            launcher.daemon.wait()
        launcher.stop_demo()


if __name__ == "__main__":
    sys.exit(main())
