"""The embedded local stack: a real Apache Kafka broker (KRaft, one node) and Redis on loopback.

No Docker needed. Kafka's jars are resolved from Maven Central once (``mvn
dependency:copy-dependencies`` on a small pom shipped with the package) into
``~/.cache/streamproc/kafka-<version>/libs``; the broker runs as ``java ... kafka.Kafka``.
Redis is Debian's ``redis-server``, or any Redis already answering on the port.

``up`` is idempotent and reuses what already answers; ``down`` stops only the processes ``up``
started, which it knows by the PID files it wrote.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from streamproc.errors import StackError

KAFKA_VERSION = "3.9.1"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_REDIS_PORT = 6379
DEFAULT_CLUSTER_KAFKA_PORT = 9192
DEFAULT_CLUSTER_REDIS_PORT = 7001
HOST = "127.0.0.1"


def cache_dir() -> Path:
    """Where jars, broker data and PID files live (``$STREAMPROC_CACHE`` or ``~/.cache``)."""
    base = os.environ.get("STREAMPROC_CACHE") or Path.home() / ".cache" / "streamproc"
    return Path(base)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    state: str  # "running (pid N)", "external", "down"
    log: Path | None = None

    def line(self) -> str:
        log = f"  log: {self.log}" if self.log else ""
        return f"{self.name:<6} {self.address:<16} {self.state}{log}"


_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def port_open(port: int, host: str = HOST, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class _Service:
    name: str

    def __init__(self, port: int) -> None:
        self.port = port
        self.run_dir = cache_dir() / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}-{self.port}.pid"

    def our_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def _spawn(self, argv: list[str], log: Path, cwd: Path) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # survives the CLI; `down` stops it by PID
            )
        self.pid_file.write_text(str(proc.pid))
        _SPAWNED[proc.pid] = proc  # kept so the handle is reaped by stop(), not garbage-collected
        return proc.pid

    def stop(self) -> bool:
        pid = self.our_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        spawned = _SPAWNED.pop(pid, None)
        if spawned is not None:
            spawned.wait(10)
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        self.pid_file.unlink(missing_ok=True)
        return True


class Redis(_Service):
    name = "redis"

    @property
    def data(self) -> Path:
        return cache_dir() / f"redis-{self.port}"

    def answers(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return False
        # +PONG, or -NOAUTH from a Redis that wants a password: either way it is Redis.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def status(self) -> ServiceStatus:
        pid = self.our_pid()
        state = f"running (pid {pid})" if pid else "external" if self.answers() else "down"
        return ServiceStatus(self.name, f"{HOST}:{self.port}", state)

    def up(self) -> str:
        if self.our_pid() and self.answers():
            return "already running"
        if self.answers():
            return "reusing the Redis already answering"
        if port_open(self.port):
            raise StackError(
                f"port {self.port} is in use by something that is not Redis; stop it or choose "
                "another port with --redis-port"
            )
        binary = shutil.which("redis-server") or _apt_install("redis-server", "redis-server")
        data = self.data
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
        ]
        self._spawn(argv, data / "redis.log", data)
        _wait(self.answers, 20, f"redis-server did not answer on {self.port}; see {data}/redis.log")
        return "started"


class Kafka(_Service):
    name = "kafka"

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.home = cache_dir() / f"kafka-{KAFKA_VERSION}"
        self.libs = self.home / "libs"
        self.data = self.home / f"data-{port}"
        self.log = self.data / "server.log"

    @property
    def controller_port(self) -> int:
        return self.port + 1

    def answers(self, timeout: float = 2.0) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"{HOST}:{self.port}", "log_level": 0})
        try:
            return bool(admin.list_topics(timeout=timeout).brokers)
        except Exception:  # any failure to answer a metadata request means "not ready"
            return False

    def status(self) -> ServiceStatus:
        pid = self.our_pid()
        state = f"running (pid {pid})" if pid else "external" if self.answers() else "down"
        return ServiceStatus(self.name, f"{HOST}:{self.port}", state, self.log if pid else None)

    def resolve_jars(self) -> Path:
        """Resolve the broker's classpath from Maven Central once; later calls are free."""
        if (self.libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            return self.libs
        mvn = _need("mvn", "maven")
        _need("java", "openjdk-17-jre-headless")
        self.home.mkdir(parents=True, exist_ok=True)
        staging = self.home / f"libs.{os.getpid()}"
        pom = resources.files("streamproc") / "data" / "kafka-pom.xml"
        with resources.as_file(pom) as pom_path:
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ]
            print(f"resolving Kafka {KAFKA_VERSION} jars from Maven Central ...", file=sys.stderr)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise StackError(f"mvn could not resolve Kafka {KAFKA_VERSION}:\n{proc.stdout[-2000:]}")
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        return self.libs

    def _settings(self) -> dict[str, str]:
        """The broker's ``server.properties``, as a mapping."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data / "logs"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": "8388608",
            "auto.create.topics.enable": "true",
            # The demo's and the tests' traffic carries record times in the past (2024); the
            # topics' retention (7-30 days) would delete it at the first check (30 s after
            # start, then every 5 min by default), under a test reading it back. A local
            # stack checks a week after start, then once a week.
            "log.initial.task.delay.ms": "604800000",
            "log.retention.check.interval.ms": "604800000",
        }

    def _properties(self) -> Path:
        props = self.data / "server.properties"
        self.data.mkdir(parents=True, exist_ok=True)
        props.write_text("".join(f"{k}={v}\n" for k, v in self._settings().items()))
        return props

    def _format(self, java: str, classpath: str, props: Path, cluster_id: str) -> None:
        """Format the KRaft storage once (``cluster_id`` in Kafka's base64 form)."""
        if (self.data / "logs" / "meta.properties").exists():
            return
        argv = [java, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        fmt = subprocess.run(
            [*argv, "-t", cluster_id, "-c", str(props)],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise StackError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")

    def _launch(self, java: str, classpath: str, props: Path) -> int:
        log4j = resources.files("streamproc") / "data" / "kafka-log4j.properties"
        log4j_copy = self.data / "log4j.properties"
        log4j_copy.write_text(log4j.read_text())
        argv = [
            java,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j_copy}",
            f"-Dkafka.logs.dir={self.data}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
        return self._spawn(argv, self.data / "stdout.log", self.data)

    def _check_ports_free(self) -> None:
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise StackError(
                    f"port {port} is in use by something that is not this stack's Kafka; stop it "
                    "or choose another port with --kafka-port (the controller uses port + 1)"
                )

    def up(self, fresh: bool = False) -> str:
        """Start Kafka unless it runs; ``fresh``: on empty storage (what earlier runs left in
        its data directory, their topics and records, is deleted first)."""
        if self.our_pid():
            _wait(self.answers, 60, f"Kafka is starting but does not answer; see {self.log}")
            return "already running"
        if self.answers():
            return "reusing the Kafka already answering"
        self._check_ports_free()
        if fresh:
            shutil.rmtree(self.data / "logs", ignore_errors=True)
        java = _need("java", "openjdk-17-jre-headless")
        classpath = f"{self.resolve_jars()}/*"
        props = self._properties()
        self._format(java, classpath, props, _kafka_cluster_id(str(uuid.uuid4())))
        pid = self._launch(java, classpath, props)

        def ready() -> bool:
            if not _pid_alive(pid):
                raise StackError(
                    f"Kafka exited at start; see {self.log} and {self.data}/stdout.log"
                )
            return self.answers()

        _wait(ready, 90, f"Kafka did not answer a metadata request in 90 s; see {self.log}")
        return "started"


class KafkaNode(Kafka):
    """One node of a local KRaft cluster: broker and controller, ``node.id`` 1..n.

    Node ``i`` of a cluster based at ``base`` listens on ``base + 2 * (i - 1)`` (its controller
    on the next port) and keeps its data under ``kafka-<version>/cluster-<base>/node-<i>``.
    """

    name = "kafka-node"

    def __init__(self, base: int, node_id: int, size: int) -> None:
        super().__init__(base + 2 * (node_id - 1))
        self.base = base
        self.node_id = node_id
        self.size = size
        self.data = self.home / f"cluster-{base}" / f"node-{node_id}"
        self.log = self.data / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"kafka-cluster-{self.base}-{self.node_id}.pid"

    def _settings(self) -> dict[str, str]:
        voters = ",".join(
            f"{i}@{HOST}:{self.base + 2 * (i - 1) + 1}" for i in range(1, self.size + 1)
        )
        return {
            **super()._settings(),
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
        }


class KafkaCluster:
    """A KRaft cluster of ``size`` nodes on loopback, each a broker and a controller.

    Parameters
    ----------
    base : int
        Node 1's broker port; node ``i`` uses ``base + 2 * (i - 1)`` and the port after it.
    size : int
        The number of nodes (at least 3: topics are replicated three times, min ISR 2).
    """

    name = "kafka"

    def __init__(self, base: int, size: int = 3) -> None:
        if size < 3:
            raise StackError(f"a Kafka cluster needs at least 3 brokers, not {size}")
        self.base = base
        self.size = size
        self.nodes = [KafkaNode(base, i, size) for i in range(1, size + 1)]
        self.home = self.nodes[0].data.parent

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        if not 1 <= node_id <= self.size:
            raise StackError(f"no Kafka node {node_id}; nodes are 1..{self.size}")
        return self.nodes[node_id - 1]

    def brokers(self, timeout: float = 2.0, via: KafkaNode | None = None) -> set[int]:
        """The broker ids a metadata request lists (empty when no node answers).

        ``via`` asks that node (each node has its own view of the cluster's metadata, and a
        restarted broker shows in one before another)."""
        from confluent_kafka.admin import AdminClient

        nodes = self.nodes if via is None else [via]
        live = [f"{HOST}:{n.port}" for n in nodes if port_open(n.port)]
        if not live:
            return set()
        admin = AdminClient({"bootstrap.servers": ",".join(live), "log_level": 0})
        try:
            return set(admin.list_topics(timeout=timeout).brokers)
        except Exception:  # any failure to answer a metadata request means "not ready"
            return set()

    def answers(self) -> bool:
        return len(self.brokers()) == self.size

    def our_pid(self) -> int | None:
        """The PID of the first node this stack runs (``None`` when it runs none)."""
        return next((pid for pid in self.node_pids().values() if pid), None)

    def node_pids(self) -> dict[int, int | None]:
        """Each node's PID, ``None`` for a node that is not running."""
        return {node.node_id: node.our_pid() for node in self.nodes}

    def status(self) -> list[ServiceStatus]:
        out = []
        for node in self.nodes:
            pid = node.our_pid()
            state = f"running (pid {pid})" if pid else "down"
            log = node.log if pid else None
            out.append(ServiceStatus(f"kafka{node.node_id}", f"{HOST}:{node.port}", state, log))
        return out

    def _cluster_id(self) -> str:
        """The cluster id every node is formatted with, kept beside the nodes' data."""
        path = self.home / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        cluster_id = _kafka_cluster_id(str(uuid.uuid4()))
        self.home.mkdir(parents=True, exist_ok=True)
        path.write_text(cluster_id)
        return cluster_id

    def _launch(self, node: KafkaNode) -> int:
        java = _need("java", "openjdk-17-jre-headless")
        classpath = f"{node.resolve_jars()}/*"
        props = node._properties()
        node._format(java, classpath, props, self._cluster_id())
        return node._launch(java, classpath, props)

    def _wait_brokers(self, wanted: set[int], pids: dict[int, int], seconds: float) -> None:
        def ready() -> bool:
            for node_id, pid in pids.items():
                if not _pid_alive(pid):
                    log = self.node(node_id).log
                    raise StackError(f"Kafka node {node_id} exited at start; see {log}")
            # A started node must answer itself: right after a kill the others still list the
            # dead broker until its session times out, which would look like the new one.
            started = [self.node(node_id) for node_id in pids]
            if not all(node.node_id in self.brokers(via=node) for node in started):
                return False
            live = [node for node in self.nodes if port_open(node.port)]
            return all(wanted <= self.brokers(via=node) for node in live)

        _wait(
            ready,
            seconds,
            f"the Kafka cluster did not list brokers {sorted(wanted)} in {seconds:.0f} s; "
            f"see the server.log files under {self.home}",
        )

    def up(self, fresh: bool = False) -> str:
        """Start the nodes that are not running; wait until metadata lists every broker.
        ``fresh``, with no node running: on empty storage (earlier runs' data deleted)."""
        running = {i for i, pid in self.node_pids().items() if pid}
        if not running and self.answers():
            return "reusing the Kafka cluster already answering"
        missing = [n for n in self.nodes if n.node_id not in running]
        for node in missing:
            node._check_ports_free()
        if fresh and not running:
            shutil.rmtree(self.home, ignore_errors=True)
        pids = {node.node_id: self._launch(node) for node in missing}
        self._wait_brokers(set(range(1, self.size + 1)), pids, 150)
        if not missing:
            return "already running"
        if running:
            return f"started nodes {sorted(pids)}"
        return f"started ({self.size} nodes)"

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id``, as a crash would stop it."""
        _sigkill(self.node(node_id), f"Kafka node {node_id}")

    def start(self, node_id: int, timeout: float = 90) -> None:
        """Restart node ``node_id`` with its existing data; wait until metadata lists it."""
        node = self.node(node_id)
        if node.our_pid():
            return
        node._check_ports_free()
        pid = self._launch(node)
        self._wait_brokers({node_id}, {node_id: pid}, timeout)

    def stop(self) -> bool:
        """Stop every node this stack started, found by its PID file; ``False`` if none."""
        pid_files = sorted(self.nodes[0].run_dir.glob(f"kafka-cluster-{self.base}-*.pid"))
        ids = {int(f.stem.rsplit("-", 1)[1]) for f in pid_files if f.stem[-1].isdigit()}
        size = max([self.size, *ids])
        stopped = [KafkaNode(self.base, i, size).stop() for i in sorted(ids)]
        return any(stopped)


class RedisNode(Redis):
    """One ``redis-server`` of a local Redis Cluster, with its ``nodes-<port>.conf``."""

    name = "redis-node"

    def __init__(self, port: int, base: int) -> None:
        super().__init__(port)
        self.base = base

    @property
    def data(self) -> Path:
        return cache_dir() / f"redis-cluster-{self.base}" / str(self.port)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"redis-cluster-{self.base}-{self.port}.pid"

    def command(self, *args: str) -> object:
        """One command's reply (``None`` when the node does not answer)."""
        import redis

        client = redis.Redis(host=HOST, port=self.port, socket_timeout=2, decode_responses=True)
        try:
            return client.execute_command(*args)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def launch(self) -> int:
        """Start ``redis-server`` in cluster mode; it rejoins from its nodes.conf if it has one."""
        for port in (self.port, self.port + 10000):
            if port_open(port):
                raise StackError(
                    f"port {port} is in use; stop what holds it or choose another base port "
                    "with --redis-port (a cluster node also uses port + 10000)"
                )
        binary = shutil.which("redis-server") or _apt_install("redis-server", "redis-server")
        self.data.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{self.port}.conf",
            "--cluster-node-timeout",
            "2000",
            "--appendonly",
            "no",
            "--save",
            "",
            "--dir",
            str(self.data),
        ]
        pid = self._spawn(argv, self.data / "redis.log", self.data)
        _wait(self.answers, 20, f"redis-server did not answer on {self.port}; see {self.data}")
        return pid


class RedisCluster:
    """A Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each.

    Parameters
    ----------
    base : int
        The first node's port; the nodes use ``base .. base + masters * (1 + replicas) - 1``,
        and each its cluster bus on ``port + 10000``.
    masters : int
        The number of masters (at least 3, as Redis Cluster requires).
    replicas : int
        Replicas per master.
    """

    name = "redis"

    def __init__(self, base: int, masters: int = 3, replicas: int = 1) -> None:
        if masters < 3:
            raise StackError(f"a Redis Cluster needs at least 3 masters, not {masters}")
        self.base = base
        self.n_masters = masters
        self.ports = list(range(base, base + masters * (1 + replicas)))
        self.replicas = replicas
        # The bus port must stay out of the kernel's ephemeral range (32768 and up), where an
        # outgoing connection may hold it when the node starts.
        if self.ports[-1] + 10000 >= 32768:
            raise StackError(
                f"Redis Cluster ports {self.ports[0]}..{self.ports[-1]} put the cluster bus "
                f"(port + 10000) at or above 32768; choose a base port below "
                f"{22769 - len(self.ports)} with --redis-port"
            )
        self.nodes = {port: RedisNode(port, base) for port in self.ports}
        self.home = cache_dir() / f"redis-cluster-{base}"

    @property
    def url(self) -> str:
        """Every node, so that a client starts while any one of them is down."""
        return f"redis+cluster://{','.join(f'{HOST}:{port}' for port in self.ports)}/0"

    def node(self, port: int) -> RedisNode:
        if port not in self.nodes:
            raise StackError(f"no Redis Cluster node on port {port}; nodes are {self.ports}")
        return self.nodes[port]

    def our_pid(self) -> int | None:
        """The PID of the first node this stack runs (``None`` when it runs none)."""
        return next((pid for pid in self.node_pids().values() if pid), None)

    def node_pids(self) -> dict[int, int | None]:
        """Each node's PID by port, ``None`` for a node that is not running."""
        return {port: node.our_pid() for port, node in self.nodes.items()}

    def live(self) -> list[int]:
        """The ports of the nodes that answer PING."""
        return [port for port, node in self.nodes.items() if node.answers()]

    def _info(self, port: int) -> dict[str, str]:
        reply = self.nodes[port].command("CLUSTER", "INFO")
        if not isinstance(reply, str):
            return {}
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)

    def _role(self, port: int) -> str | None:
        reply = self.nodes[port].command("ROLE")
        return str(reply[0]) if isinstance(reply, list) and reply else None

    def replicas_synced(self) -> bool:
        """Every live replica's link to its master is up."""
        for port in self.live():
            reply = self.nodes[port].command("INFO", "replication")
            if not isinstance(reply, dict):
                return False
            if reply.get("role") == "slave" and reply.get("master_link_status") != "up":
                return False
        return True

    def masters(self) -> list[int]:
        """The ports of the live nodes that are masters now."""
        return [port for port in self.live() if self._role(port) == "master"]

    def ok(self) -> bool:
        """Every live node says ``cluster_state:ok``, and every slot is served by a live node.

        The second half matters right after a master dies: until the others flag it as failed
        (the node timeout), they still report ``ok`` for slots nobody serves.
        """
        live = self.live()
        if not live:
            return False
        for port in live:
            info = self._info(port)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                return False
        nodes = self.nodes[live[0]].command("CLUSTER", "NODES")
        if not isinstance(nodes, str):
            return False
        for line in nodes.splitlines():
            fields = line.split()
            if len(fields) > 8 and "master" in fields[2]:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                if port not in live:
                    return False
        return True

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until :meth:`ok`; raise :class:`StackError` after ``timeout`` seconds."""
        _wait(self.ok, timeout, f"the Redis Cluster on {self.ports} is not ok after {timeout} s")

    def answers(self) -> bool:
        return len(self.live()) == len(self.ports) and self.ok()

    def status(self) -> list[ServiceStatus]:
        out = []
        for port, node in self.nodes.items():
            pid = node.our_pid()
            role = self._role(port) if pid else None
            state = f"running (pid {pid}), {role}" if pid else "down"
            out.append(ServiceStatus("redis", f"{HOST}:{port}", state))
        return out

    def up(self) -> str:
        """Start the nodes that are not running, create the cluster once, wait until ok."""
        pids = self.node_pids()
        running = [port for port, pid in pids.items() if pid]
        if not running and self.answers():
            return "reusing the Redis Cluster already answering"
        if not running:
            # A cold start makes a new cluster: nothing is kept, and an old nodes.conf would
            # make the nodes wait for peers that lost their slots. A replica's full sync leaves
            # a dump.rdb even without `save`; loaded, its keys would make a node claim their
            # slots and refuse to join a new cluster.
            for old in (*self.home.glob("*/nodes-*.conf"), *self.home.glob("*/dump.rdb")):
                old.unlink()
        missing = [port for port, pid in pids.items() if not pid]
        for port in missing:
            self.nodes[port].launch()
        # Not "if nothing was running": an `up` that failed half-way leaves nodes without slots.
        if all(self._info(port).get("cluster_slots_assigned") == "0" for port in self.ports):
            cli = shutil.which("redis-cli") or _apt_install("redis-cli", "redis-tools")
            create = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"{HOST}:{p}" for p in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if create.returncode != 0:
                raise StackError(f"redis-cli --cluster create failed:\n{create.stdout[-2000:]}")
        self.wait_ok(60)
        # A replica that has never synced with its master refuses to take over from it (its
        # data counts as too old), so a cluster is ready once every replica's link is up.
        _wait(
            self.replicas_synced,
            60,
            f"the Redis Cluster's replicas did not sync with their masters; see {self.home}",
        )
        if not missing:
            return "already running"
        if running:
            return f"started nodes {missing}"
        return f"started ({len(self.ports)} nodes, {self.n_masters} masters)"

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``, as a crash would stop it."""
        _sigkill(self.node(port), f"the Redis Cluster node on {port}")

    def start(self, port: int) -> None:
        """Restart the node on ``port`` with its nodes.conf, so it rejoins the cluster."""
        node = self.node(port)
        if not node.our_pid():
            node.launch()

    def stop(self) -> bool:
        """Stop every node this stack started, found by its PID file; ``False`` if none."""
        pid_files = sorted(self.nodes[self.base].run_dir.glob(f"redis-cluster-{self.base}-*.pid"))
        ports = {int(f.stem.rsplit("-", 1)[1]) for f in pid_files if f.stem[-1].isdigit()}
        return any([RedisNode(port, self.base).stop() for port in sorted(ports)])


def _sigkill(node: _Service, what: str) -> None:
    """SIGKILL a node this stack started (a crash), reap it and forget its PID file."""
    pid = node.our_pid()
    if pid is None:
        raise StackError(f"{what} is not running")
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    node.pid_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Collect a killed child so it does not linger as a zombie."""
    spawned = _SPAWNED.pop(pid, None)
    if spawned is not None:
        spawned.wait(10)
        return
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _kafka_cluster_id(seed: str) -> str:
    """A KRaft cluster id: 16 bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.UUID(seed).bytes).decode().rstrip("=")


def _wait(check, seconds: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise StackError(message)


def _need(binary: str, debian_package: str) -> str:
    path = shutil.which(binary)
    if path:
        return path
    return _apt_install(binary, debian_package)


def _apt_install(binary: str, debian_package: str) -> str:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(
            f"{binary} is not installed; install it (Debian/Ubuntu: sudo apt-get install -y "
            f"{debian_package}) and run the command again"
        )
    print(f"installing {debian_package} with apt-get ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-qq", debian_package], env=env, capture_output=True, text=True
    )
    path = shutil.which(binary)
    if proc.returncode != 0 or not path:
        raise StackError(f"apt-get install {debian_package} failed:\n{proc.stderr[-2000:]}")
    return path


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError:
        raise StackError(f"{name} must be an integer, not {value!r}") from None


@dataclass
class Stack:
    """The local stack on loopback.

    Parameters
    ----------
    kafka_port : int
        The broker's port (node 1's in a cluster); 0 takes ``$STREAMPROC_STACK_KAFKA_PORT``, else
        9092 for one broker and 9192 for a cluster.
    redis_port : int
        Redis's port (the first node's in a Redis Cluster); 0 takes
        ``$STREAMPROC_STACK_REDIS_PORT``, else 6379, or 7001 for a Redis Cluster.
    brokers : int
        1 for the single KRaft node, 3 or more for a cluster (``$STREAMPROC_STACK_BROKERS``).
    redis_cluster : int
        0 for a plain Redis, else the number of masters of a Redis Cluster, each with one
        replica (``$STREAMPROC_STACK_REDIS_CLUSTER``).
    """

    kafka_port: int = 0
    redis_port: int = 0
    brokers: int = field(default_factory=lambda: _env_int("STREAMPROC_STACK_BROKERS", 1))
    redis_cluster: int = field(
        default_factory=lambda: _env_int("STREAMPROC_STACK_REDIS_CLUSTER", 0)
    )

    def __post_init__(self) -> None:
        if self.brokers == 2 or self.brokers < 1:
            raise StackError(f"--brokers is 1 or at least 3, not {self.brokers}")
        if self.redis_cluster < 0 or 0 < self.redis_cluster < 3:
            raise StackError(f"--redis-cluster is 0 or at least 3, not {self.redis_cluster}")
        kafka_default = DEFAULT_KAFKA_PORT if self.brokers == 1 else DEFAULT_CLUSTER_KAFKA_PORT
        redis_default = DEFAULT_REDIS_PORT if not self.redis_cluster else DEFAULT_CLUSTER_REDIS_PORT
        self._kafka_port_given = bool(
            self.kafka_port or os.environ.get("STREAMPROC_STACK_KAFKA_PORT")
        )
        self._redis_port_given = bool(
            self.redis_port or os.environ.get("STREAMPROC_STACK_REDIS_PORT")
        )
        self.kafka_port = self.kafka_port or _env_int("STREAMPROC_STACK_KAFKA_PORT", kafka_default)
        self.redis_port = self.redis_port or _env_int("STREAMPROC_STACK_REDIS_PORT", redis_default)

    @property
    def kafka(self) -> Kafka | KafkaCluster:
        """The single broker, or the cluster when ``brokers > 1``."""
        if self.brokers > 1:
            return KafkaCluster(self.kafka_port, self.brokers)
        return Kafka(self.kafka_port)

    @property
    def redis(self) -> Redis | RedisCluster:
        """The plain Redis, or the Redis Cluster when ``redis_cluster`` is set."""
        if self.redis_cluster:
            return RedisCluster(self.redis_port, self.redis_cluster)
        return Redis(self.redis_port)

    @property
    def bootstrap(self) -> str:
        kafka = self.kafka
        return kafka.bootstrap if isinstance(kafka, KafkaCluster) else f"{HOST}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        redis = self.redis
        return (
            redis.url if isinstance(redis, RedisCluster) else f"redis://{HOST}:{self.redis_port}/0"
        )

    def up(self, fresh: bool = False) -> dict[str, str]:
        """Start what is not running; return what each service did. ``fresh``: a Kafka started
        now starts on empty storage (a test session's: its topics do not pile up run after
        run; Redis keeps nothing on disk)."""
        return {"redis": self.redis.up(), "kafka": self.kafka.up(fresh=fresh)}

    def down(self) -> dict[str, str]:
        """Stop only the processes ``up`` started.

        In single-node mode, a cluster an earlier ``up`` started on the same ports (or on the
        cluster's default ports when no port was given) is stopped too, found by its PID files.
        """
        done = {
            svc.name: "stopped" if svc.stop() else "not started by this stack"
            for svc in (self.kafka, self.redis)
        }
        if self.brokers == 1:
            base = self.kafka_port if self._kafka_port_given else DEFAULT_CLUSTER_KAFKA_PORT
            if KafkaCluster(base).stop():
                done["kafka cluster"] = "stopped"
        if not self.redis_cluster:
            base = self.redis_port if self._redis_port_given else DEFAULT_CLUSTER_REDIS_PORT
            with contextlib.suppress(StackError):  # a plain Redis port may be no cluster base
                if RedisCluster(base).stop():
                    done["redis cluster"] = "stopped"
        return done

    def status(self) -> list[ServiceStatus]:
        kafka, redis = self.kafka, self.redis
        out = kafka.status() if isinstance(kafka, KafkaCluster) else [kafka.status()]
        return out + (redis.status() if isinstance(redis, RedisCluster) else [redis.status()])

    def started_by_us(self) -> bool:
        return self.kafka.our_pid() is not None or self.redis.our_pid() is not None
