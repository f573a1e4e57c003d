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
        data = cache_dir() / f"redis-{self.port}"
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

    def _properties(self) -> Path:
        props = self.data / "server.properties"
        lines = {
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
        self.data.mkdir(parents=True, exist_ok=True)
        props.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return props

    def up(self) -> str:
        if self.our_pid():
            _wait(self.answers, 60, f"Kafka is starting but does not answer; see {self.log}")
            return "already running"
        if self.answers():
            return "reusing the Kafka already answering"
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise StackError(
                    f"port {port} is in use by something that is not this stack's Kafka; stop it "
                    "or choose another port with --kafka-port (the controller uses port + 1)"
                )
        java = _need("java", "openjdk-17-jre-headless")
        libs = self.resolve_jars()
        classpath = f"{libs}/*"
        props = self._properties()
        if not (self.data / "logs" / "meta.properties").exists():
            cluster_id = str(uuid.uuid4())
            fmt = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    _kafka_cluster_id(cluster_id),
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
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
        pid = self._spawn(argv, self.data / "stdout.log", self.data)

        def ready() -> bool:
            if not _pid_alive(pid):
                raise StackError(
                    f"Kafka exited at start; see {self.log} and {self.data}/stdout.log"
                )
            return self.answers()

        _wait(ready, 90, f"Kafka did not answer a metadata request in 90 s; see {self.log}")
        return "started"


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


@dataclass
class Stack:
    """The local stack on loopback; ports from arguments or ``STREAMPROC_STACK_*_PORT``."""

    kafka_port: int = field(
        default_factory=lambda: int(
            os.environ.get("STREAMPROC_STACK_KAFKA_PORT", DEFAULT_KAFKA_PORT)
        )
    )
    redis_port: int = field(
        default_factory=lambda: int(
            os.environ.get("STREAMPROC_STACK_REDIS_PORT", DEFAULT_REDIS_PORT)
        )
    )

    @property
    def kafka(self) -> Kafka:
        return Kafka(self.kafka_port)

    @property
    def redis(self) -> Redis:
        return Redis(self.redis_port)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def up(self) -> dict[str, str]:
        """Start what is not running; return what each service did."""
        return {"redis": self.redis.up(), "kafka": self.kafka.up()}

    def down(self) -> dict[str, str]:
        """Stop only the processes ``up`` started."""
        return {
            svc.name: "stopped" if svc.stop() else "not started by this stack"
            for svc in (self.kafka, self.redis)
        }

    def status(self) -> list[ServiceStatus]:
        return [self.kafka.status(), self.redis.status()]

    def started_by_us(self) -> bool:
        return self.kafka.our_pid() is not None or self.redis.our_pid() is not None
