"""
Launchers of a real Redis Cluster and of a Sentinel-managed primary, for
tests and measurements: every process a private ``redis-server`` on a free
loopback port, never the machine's shared instance and never a fake.

    - L{RedisCluster}: ``redis-server --cluster-enabled yes`` processes
      joined by ``redis-cli --cluster create`` (by default 3 primaries with
      one replica each);
    - L{RedisSentinels}: one primary, its replicas, and sentinels
      (``redis-server --sentinel``: Debian's ``redis-server`` package ships no
      ``redis-sentinel`` binary, and the flag does the same).

Both wait until they are usable (``cluster_state:ok`` on every node; every
sentinel sees the replica and the other sentinels), can kill a node with
SIGKILL as a crash would, and wait for (and time) the failover that follows.
Every helper blocks: tests that drive them need no reactor of their own.

(The small RESP client and L{free_port} are kept here, not imported from the
launchers of the daemon, so this module stands alone while those move.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from apicache.harness.polling import WaitTimeout, wait_until

__all__ = [
    "RedisReplyError",
    "free_port",
    "resp_command",
    "resp_pipeline",
    "RedisNode",
    "ClusterNodeInfo",
    "RedisCluster",
    "RedisSentinels",
    "wait_for",
]

_T = TypeVar("_T")

HOST = "127.0.0.1"


class RedisReplyError(Exception):
    """
    Redis answered a command with an error reply (``-ERR ...``).
    """


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _read_reply(f: Any) -> Any:
    """
    Read one RESP2 reply from the file ``f``: bytes, int, None, a list, or a
    L{RedisReplyError} (returned, not raised, so that one inside an array
    does not lose the rest of the reply).
    """
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"not a RESP reply: {line[:40]!r}")


def resp_command(port: int, *args: str | bytes | int, host: str = HOST, timeout: float = 2.0) -> Any:
    """
    Send one command to the Redis at ``host:port`` on a new connection and
    return its reply (see L{_read_reply}).

    @raise RedisReplyError: on an error reply.
    @raise OSError: when nothing answers within ``timeout``.
    """
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_encode(args))
        reply = _read_reply(s.makefile("rb"))
    if isinstance(reply, RedisReplyError):
        raise reply
    return reply


def resp_pipeline(port: int, *commands: Sequence[str | bytes | int], host: str = HOST, timeout: float = 5.0) -> list[Any]:
    """
    Send ``commands`` on one connection (as one client: C{WAIT} counts
    that client's writes) and return their replies in order, an error reply
    as a L{RedisReplyError} in its place.

    @raise OSError: when nothing answers within ``timeout``.
    """
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"".join(_encode(c) for c in commands))
        f = s.makefile("rb")
        return [_read_reply(f) for _ in commands]


def wait_for(condition: Callable[[], _T | None], timeout: float, what: str, step: float = 0.05) -> _T:
    """
    Call ``condition`` until it returns something other than ``None`` or
    C{False} (a connection error counts as not yet), and return that.

    @raise TimeoutError: not so within ``timeout`` seconds; says ``what``
        was awaited and the last error seen.
    """
    last: list[Exception] = []

    def attempt() -> tuple[_T] | None:
        try:
            result = condition()
        except (OSError, RedisReplyError, ConnectionError) as e:
            last[:] = [e]
            return None
        # boxed: a result such as 0 or b"" is an answer, not "not yet"
        return None if result is None or result is False else (result,)

    try:
        found = wait_until(attempt, timeout, step, what)
    except WaitTimeout:
        raise TimeoutError(f"{what}: not within {timeout} s" + (f" (last error: {last[0]})" if last else "")) from None
    assert found is not None  # wait_until returns a true value
    return found[0]


def _info(port: int, section: str) -> dict[str, str]:
    text = resp_command(port, "INFO", section).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


class RedisNode:
    """
    One private ``redis-server`` on a loopback port that outlives its
    restarts; it saves nothing to disk (a cluster node keeps its
    ``nodes-<port>.conf``, a sentinel its configuration file, in
    ``directory``).

    @ivar args: the arguments after ``redis-server`` (a configuration file
        first, for a sentinel).
    """

    def __init__(self, directory: str, args: Sequence[str] = (), port: int | None = None, name: str = "redis") -> None:
        self.directory = directory
        self.port = port or free_port()
        self.name = name
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<RedisNode {self.name} {self.address}{'' if self.alive else ' (down)'}>"

    @property
    def address(self) -> str:
        """
        ``host:port``, as Redis lists nodes.
        """
        return f"{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, f"{self.name}-{self.port}.log")

    def start(self, wait: float = 10.0, extra: Sequence[str] = ()) -> RedisNode:
        """
        Start the process and wait until it answers PING.

        @param extra: arguments for this start only (after L{args}).
        """
        if self.alive:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server", *self.args, *extra, "--port", str(self.port), "--bind", HOST,
                    "--save", "", "--appendonly", "no", "--dir", self.directory,
                ],
                stdout=log, stderr=subprocess.STDOUT,
            )
        proc = self.proc

        def pong() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self!r} exited with {proc.returncode}; see {self.log_path}")
            return bool(self.command("PING") == b"PONG")

        wait_for(pong, wait, f"{self!r} answering PING", step=0.02)
        return self

    def command(self, *args: str | bytes | int, timeout: float = 2.0) -> Any:
        """
        Run one command on this node (blocking); see L{resp_command}.
        """
        return resp_command(self.port, *args, timeout=timeout)

    def pipeline(self, *commands: Sequence[str | bytes | int], timeout: float = 5.0) -> list[Any]:
        """
        Run ``commands`` on one connection; see L{resp_pipeline}.
        """
        return resp_pipeline(self.port, *commands, timeout=timeout)

    def kill(self) -> None:
        """
        SIGKILL, as a crash would, and reap the process.
        """
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    stop = kill

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing answers."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)


@dataclass(frozen=True)
class ClusterNodeInfo:
    """
    One line of ``CLUSTER NODES`` as another node sees it.

    @ivar primary_id: the node id of its primary, for a replica.
    @ivar slots: the ranges of slots it serves, both ends included.
    """

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags

    @classmethod
    def parse(cls, line: str) -> ClusterNodeInfo:
        fields = line.split()
        address = fields[1].split("@", 1)[0]
        slots = []
        for s in fields[8:]:
            if s.startswith("["):
                continue  # a slot being migrated or imported
            lo, _, hi = s.partition("-")
            slots.append((int(lo), int(hi or lo)))
        return cls(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            primary_id=None if fields[3] == "-" else fields[3],
            connected=fields[7] == "connected",
            slots=tuple(slots),
        )


class RedisCluster:
    """
    A Redis Cluster of ``primaries`` × (1 + ``replicas``) private processes
    on loopback: started, joined with ``redis-cli --cluster create``, and
    awaited until every node says ``cluster_state:ok``.

    @param node_timeout_ms: C{cluster-node-timeout}: how long a silent
        primary takes to be failed over (the cluster promotes a replica about
        one to two such periods after a kill).  Under a loaded machine, a
        value much lower than a second risks failovers nobody asked for.
    """

    def __init__(
        self,
        directory: str,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisNode] = []
        self._served: dict[int, tuple[tuple[int, int], ...]] = {}
        for _ in range(primaries * (1 + replicas)):
            port = free_port()
            self.nodes.append(
                RedisNode(
                    directory,
                    [
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", f"nodes-{port}.conf",
                        # the bus port explicitly: the default (port + 10000)
                        # is out of range for a high free port, or taken
                        "--cluster-port", str(free_port()),
                        "--cluster-node-timeout", str(node_timeout_ms),
                        # a replica may take over however long it was cut off:
                        # tests kill and restart nodes at will
                        "--cluster-replica-validity-factor", "0",
                        *extra_args,
                    ],
                    port=port,
                    name="cluster",
                )
            )

    # -- addresses ---------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """
        ``host:port`` of every node, live or not.
        """
        return [n.address for n in self.nodes]

    @property
    def url(self) -> str:
        """
        ``redis://h:p1,h:p2,...``: every node as a seed (SPEC.md section 2).
        """
        return "redis://" + ",".join(self.addresses)

    def node(self, port: int) -> RedisNode:
        """
        Return the node listening on ``port``.
        """
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(port)

    def live_nodes(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.alive]

    # -- starting and stopping ------------------------------------------------

    def start(self, timeout: float = 60.0) -> RedisCluster:
        """
        Start every node, join them (``redis-cli --cluster create ...
        --cluster-replicas N --cluster-yes``) and wait until the cluster is
        usable (L{wait_ok}).
        """
        try:
            for n in self.nodes:
                n.start()
        except BaseException:
            self.stop()  # none left running
            raise
        result = subprocess.run(
            ["redis-cli", "--cluster", "create", *self.addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, timeout=timeout,
        )
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout[-2000:]!r} {result.stderr[-2000:]!r}")
        try:
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """
        Kill every node.
        """
        for n in self.nodes:
            n.kill()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the nodes say --------------------------------------------------

    def topology(self, via: RedisNode | None = None) -> list[ClusterNodeInfo]:
        """
        Return ``CLUSTER NODES`` as ``via`` (default: the first live node)
        sees it.
        """
        via = via or self.live_nodes()[0]
        text = via.command("CLUSTER", "NODES").decode()
        return [ClusterNodeInfo.parse(line) for line in text.splitlines() if line.strip()]

    def primaries(self, via: RedisNode | None = None) -> list[RedisNode]:
        """
        Return the nodes serving slots, as ``via`` sees it.
        """
        return [self.node(i.port) for i in self.topology(via) if i.is_primary and i.slots]

    def replicas_of(self, primary: RedisNode, via: RedisNode | None = None) -> list[RedisNode]:
        """
        Return the nodes listed as replicas of ``primary``.
        """
        infos = self.topology(via)
        ids = {i.port: i.node_id for i in infos}
        return [self.node(i.port) for i in infos if i.primary_id == ids[primary.port]]

    def primary_for(self, key: str | bytes, via: RedisNode | None = None) -> RedisNode:
        """
        Return the primary serving ``key``'s slot.
        """
        via = via or self.live_nodes()[0]
        slot = int(via.command("CLUSTER", "KEYSLOT", key))
        for i in self.topology(via):
            if i.is_primary and any(lo <= slot <= hi for lo, hi in i.slots):
                return self.node(i.port)
        raise LookupError(f"no primary serves slot {slot}")

    def state_ok(self) -> bool:
        """
        Return whether every live node says ``cluster_state:ok`` and knows
        every node of the cluster, and every live replica's link to its
        primary is up (a replica still loading its first copy acknowledges
        no C{WAIT}).
        """
        for n in self.live_nodes():
            info = _info_text(n.command("CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return False
            replication = _info(n.port, "replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def wait_ok(self, timeout: float = 30.0) -> float:
        """
        Wait until L{state_ok}; return the seconds waited.
        """
        start = time.monotonic()
        wait_for(self.state_ok, timeout, "cluster_state:ok on every node")
        return time.monotonic() - start

    # -- failures ------------------------------------------------------------

    def kill(self, node: RedisNode) -> float:
        """
        SIGKILL ``node``; return the C{time.monotonic()} of the kill.  The
        slots it served are remembered for L{wait_failover}.
        """
        for i in self.topology(next(n for n in self.live_nodes() if n is not node)):
            if i.port == node.port and i.slots:
                self._served[node.port] = i.slots
        node.kill()
        return time.monotonic()

    def wait_failover(self, old: RedisNode, timeout: float = 30.0) -> RedisNode:
        """
        Wait until every live node names the same live node, other than
        ``old``, as the primary of the slots ``old`` served, that node says
        it is a primary, and every live node says the cluster is ok; return
        that node.
        """
        slots = self._served.get(old.port) or next(i.slots for i in self.topology() if i.port == old.port)
        probe = slots[0][0]

        def promoted() -> RedisNode | None:
            owners = set()
            for n in self.live_nodes():
                owner = [i.port for i in self.topology(n)
                         if i.is_primary and any(lo <= probe <= hi for lo, hi in i.slots)]
                if len(owner) != 1 or owner[0] == old.port:
                    return None
                owners.add(owner[0])
            if len(owners) != 1 or not self.state_ok_live():
                return None
            node = self.node(owners.pop())
            if not node.alive or node.command("ROLE")[0] != b"master":
                return None
            return node

        return wait_for(promoted, timeout, f"a replica of {old!r} promoted")

    def state_ok_live(self) -> bool:
        """
        Return whether every live node says ``cluster_state:ok`` (dead nodes
        allowed).
        """
        return all(_info_text(n.command("CLUSTER", "INFO")).get("cluster_state") == "ok" for n in self.live_nodes())

    def restart(self, node: RedisNode, timeout: float = 30.0) -> None:
        """
        Start a killed node again (it keeps its node id, and rejoins as a
        replica if it was failed over) and wait until the cluster is ok with
        it known as connected by every other node.
        """
        node.start()

        def rejoined() -> bool:
            return self.state_ok() and all(
                i.connected for n in self.live_nodes() for i in self.topology(n) if i.port == node.port
                and "myself" not in i.flags
            )

        wait_for(rejoined, timeout, f"{node!r} rejoined")


def _info_text(raw: bytes) -> dict[str, str]:
    text = raw.decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


class RedisSentinels:
    """
    One primary, ``replicas`` replicas of it, and ``sentinels`` sentinels
    watching it under ``master_name``, each a private process on loopback.

    @param down_after_ms: C{sentinel down-after-milliseconds}: how long the
        primary must be silent before the sentinels fail it over.
    """

    def __init__(
        self,
        directory: str,
        master_name: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 10000,
    ) -> None:
        self.directory = directory
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = sentinels // 2 + 1
        self.first_primary = RedisNode(directory, name="primary")
        self.data_nodes: list[RedisNode] = [self.first_primary]
        for _ in range(replicas):
            self.data_nodes.append(
                RedisNode(directory, ["--replicaof", HOST, str(self.first_primary.port)], name="replica")
            )
        self.sentinels: list[RedisNode] = []
        for _ in range(sentinels):
            port = free_port()
            self.sentinels.append(RedisNode(directory, [self._sentinel_config(port), "--sentinel"], port=port, name="sentinel"))

    def _sentinel_config(self, port: int) -> str:
        # a sentinel rewrites its configuration file: one each, writable
        path = os.path.join(self.directory, f"sentinel-{port}.conf")
        with open(path, "w") as f:
            f.write(
                f"sentinel monitor {self.master_name} {HOST} {self.first_primary.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
        return path

    # -- addresses ---------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    @property
    def url(self) -> str:
        """
        ``redis://s1,s2,s3/0``: the sentinels (SPEC.md section 2, with
        ``redis_sentinel_master`` = L{master_name}).
        """
        return "redis://" + ",".join(self.sentinel_addresses) + "/0"

    def data_node(self, port: int) -> RedisNode:
        for n in self.data_nodes:
            if n.port == port:
                return n
        raise KeyError(port)

    def master_address(self) -> tuple[str, int]:
        """
        Return the primary's address as the first live sentinel gives it.
        """
        sentinel = next(s for s in self.sentinels if s.alive)
        host, port = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return host.decode(), int(port)

    def primary(self) -> RedisNode:
        """
        Return the node the sentinels name as the primary.
        """
        return self.data_node(self.master_address()[1])

    # -- starting and stopping ------------------------------------------------

    def start(self, timeout: float = 60.0) -> RedisSentinels:
        """
        Start the primary, the replicas (wait until they are in sync), then
        the sentinels, and wait until every sentinel sees every replica and
        every other sentinel.
        """
        try:
            for n in self.data_nodes:
                n.start()
            for n in self.data_nodes[1:]:
                wait_for(lambda n=n: _info(n.port, "replication").get("master_link_status") == "up",  # type: ignore[misc]
                         timeout, f"{n!r} in sync")
            for s in self.sentinels:
                s.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # none left running
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """
        Wait until every live sentinel names the same live primary, sees the
        live replicas and every other sentinel.
        """
        def ready() -> bool:
            names = set()
            for s in self.sentinels:
                if not s.alive:
                    continue
                flat = s.command("SENTINEL", "MASTER", self.master_name)
                m = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
                live_replicas = sum(1 for n in self.data_nodes if n.alive) - 1
                if (int(m["num-slaves"]) < live_replicas or int(m["num-other-sentinels"]) != len(self.sentinels) - 1
                        or "s_down" in m["flags"] or "o_down" in m["flags"]):
                    return False
                names.add(int(m["port"]))
            return len(names) == 1 and self.data_node(names.pop()).alive

        wait_for(ready, timeout, "every sentinel ready")

    def stop(self) -> None:
        """
        Kill every process.
        """
        for n in [*self.sentinels, *self.data_nodes]:
            n.kill()

    def __enter__(self) -> RedisSentinels:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- failures ------------------------------------------------------------

    def kill(self, node: RedisNode) -> float:
        """
        SIGKILL ``node`` (a data node or a sentinel); return the
        C{time.monotonic()} of the kill.
        """
        node.kill()
        return time.monotonic()

    def wait_failover(self, old: RedisNode, timeout: float = 30.0) -> RedisNode:
        """
        Wait until a quorum of sentinels names a primary other than ``old``
        and that node says it is a primary; return it.
        """
        def promoted() -> RedisNode | None:
            named = []
            for s in self.sentinels:
                if s.alive:
                    try:
                        host, port = s.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                    except OSError:
                        continue
                    named.append(int(port))
            new = [p for p in named if p != old.port]
            if len(new) < self.quorum or len(set(new)) != 1:
                return None
            node = self.data_node(new[0])
            if not node.alive or _info(node.port, "replication").get("role") != "master":
                return None
            return node

        return wait_for(promoted, timeout, f"a primary other than {old!r}")

    def restart(self, node: RedisNode, timeout: float = 30.0) -> None:
        """
        Start a killed node again.  A data node starts as a replica of the
        primary the sentinels name, as a supervisor that asks them does
        (``--replicaof``): left to themselves, the sentinels reconfigure a
        returning former primary only after two of their 10 s INFO rounds,
        and not at all while in TILT mode (30 s after any stall of their
        timer, which a loaded machine causes).  Waits until it is a replica
        in sync and every sentinel sees it, or (a sentinel) until every
        sentinel is ready again.
        """
        if node in self.sentinels:
            node.start()
            self.wait_ready(timeout)
            return
        host, port = self.master_address()
        node.start(extra=["--replicaof", host, str(port)])

        def synced() -> bool:
            info = _info(node.port, "replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        wait_for(synced, timeout, f"{node!r} a replica in sync")
        self.wait_ready(timeout)
