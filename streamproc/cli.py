"""The ``streamproc`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from streamproc.errors import StreamprocError

Handler = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from streamproc.config import load_config

    return load_config(getattr(args, "config", None))


def cmd_stack(args: argparse.Namespace) -> int:
    from streamproc.dev.stack import Stack

    shape = {"brokers": args.brokers, "redis_cluster": args.redis_cluster}
    stack = Stack(
        kafka_port=args.kafka_port or 0,
        redis_port=args.redis_port or 0,
        # A flag not given leaves the choice to $STREAMPROC_STACK_BROKERS / _REDIS_CLUSTER.
        **{name: value for name, value in shape.items() if value is not None},
    )
    if args.action == "up":
        for name, what in stack.up().items():
            print(f"{name:<6} {what}")
        print(f"export STREAMPROC_KAFKA_BOOTSTRAP={stack.bootstrap}")
        print(f"export STREAMPROC_REDIS_URL={stack.redis_url}")
    elif args.action == "down":
        for name, what in stack.down().items():
            print(f"{name:<6} {what}")
    else:
        for status in stack.status():
            print(status.line())
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streamproc.kafka import topics

    cfg = _config(args)
    report = topics.apply(cfg, topics.load_topics(cfg, args.file), args.replication_factor)
    for line in report.lines():
        print(line)
    return 1 if report.mismatches else 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from streamproc import contracts

    out = Path(args.dir)
    if args.action == "write":
        for name in contracts.write_schemas(str(out)):
            print(f"wrote {out / name}")
        return 0
    stale = [
        n
        for n in contracts.SCHEMAS
        if not (out / f"{n}.json").exists()
        or (out / f"{n}.json").read_text() != contracts.schema_text(n)
    ]
    for name in stale:
        print(
            f"{out}/{name}.json differs from the code; run: streamproc schemas write",
            file=sys.stderr,
        )
    return 1 if stale else 0


def cmd_config(args: argparse.Namespace) -> int:
    import msgspec
    import yaml

    cfg = _config(args)
    shown = msgspec.to_builtins(cfg)
    for section in ("kafka", "redis"):
        for key in ("sasl_password", "password"):
            if shown[section].get(key):
                shown[section][key] = "***"
    print(yaml.safe_dump(shown, sort_keys=False), end="")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or, given ``command``, of the built-in ones and that one.

    A feature module's sub-command comes with the module's imports (Faust, scipy: over a second
    for ``worker`` and ``replay``), so ``streamproc status`` builds only what it runs.
    """
    from streamproc.dev.stack import (
        DEFAULT_CLUSTER_KAFKA_PORT,
        DEFAULT_CLUSTER_REDIS_PORT,
        DEFAULT_KAFKA_PORT,
        DEFAULT_REDIS_PORT,
    )

    parser = argparse.ArgumentParser(
        prog="streamproc", description="Kafka-native streaming drift detection for ML models."
    )
    parser.add_argument("--config", help="YAML config file (default: $STREAMPROC_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="the local Kafka + Redis stack on 127.0.0.1 (no Docker)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--kafka-port",
        type=int,
        default=None,
        help=f"default {DEFAULT_KAFKA_PORT}, {DEFAULT_CLUSTER_KAFKA_PORT} for a cluster",
    )
    p.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help=f"default {DEFAULT_REDIS_PORT}, {DEFAULT_CLUSTER_REDIS_PORT} for a Redis Cluster",
    )
    p.add_argument(
        "--brokers",
        type=int,
        default=None,
        help="1 (default, $STREAMPROC_STACK_BROKERS) or 3+ for a KRaft cluster",
    )
    p.add_argument(
        "--redis-cluster",
        type=int,
        default=None,
        metavar="MASTERS",
        help="a Redis Cluster of MASTERS masters with a replica each "
        "($STREAMPROC_STACK_REDIS_CLUSTER)",
    )
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("topics", help="create missing topics and report mismatches")
    p.add_argument("action", choices=["apply"])
    p.add_argument("--file", help="topics YAML (default: topology/topics.yaml)")
    p.add_argument(
        "--replication-factor",
        type=int,
        help="copies of each topic created (default: kafka.replication_factor, 1); "
        "from 3 on, min.insync.replicas is 2",
    )
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("schemas", help="write or check schemas/*.json against the code")
    p.add_argument("action", choices=["write", "check"])
    p.add_argument("--dir", default="schemas")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    p.add_argument("action", choices=["show"])
    p.set_defaults(func=cmd_config)

    if command in sub.choices:  # a built-in one
        modules: list[str] = []
    elif command in COMMAND_MODULES:
        modules = [COMMAND_MODULES[command]]
    else:  # none, or one argparse will refuse: its message lists them all
        modules = list(dict.fromkeys(COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(module).register_cli(sub)
    return parser


# Sub-commands that feature modules add through their own ``register_cli(subparsers)``, so this
# file stays a thin dispatcher. Their heavy imports belong inside their handlers.
COMMAND_MODULES: dict[str, str] = {
    "smoke": "streamproc.dev.smoke",
    "worker": "streamproc.worker.app",
    "alerts": "streamproc.tools.oncall",
    "status": "streamproc.tools.oncall",
    "baseline": "streamproc.baseline.cli",
    "demo": "streamproc.dev.demo",
    "replay": "streamproc.tools.replay",
}


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names, if it names one before any help flag.

    >>> command_of(["--config", "c.yaml", "status"]), command_of(["-h"]), command_of([])
    ('status', None, None)
    """
    rest = iter(argv)
    for arg in rest:
        if arg in ("-h", "--help"):
            return None
        if arg == "--config":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    try:
        handler: Handler = args.func
        return handler(args)
    except StreamprocError as exc:
        print(f"streamproc: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
