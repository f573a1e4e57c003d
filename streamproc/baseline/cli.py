"""``streamproc baseline build|show``, and :func:`describe`, a profile's readable summary."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from streamproc.baseline.columns import ColumnPlan, ColumnRoles
from streamproc.baseline.files import profile_from_file
from streamproc.baseline.profile import (
    ALL,
    DEFAULT_BINS,
    DEFAULT_MAX_CATEGORIES,
    DEFAULT_MAX_SEGMENT_VALUES,
    BaselineError,
    ColumnReference,
    NumericReference,
    ReferenceProfile,
    SegmentReference,
)
from streamproc.baseline.store import BaselineStore
from streamproc.baseline.topic import profile_from_topic

if TYPE_CHECKING:
    from streamproc.config import Config

__all__ = ["cmd_build", "cmd_show", "describe", "register_cli"]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def task_figures(seg: SegmentReference) -> str:
    """The reference figures of a segment's task, for a one-line summary.

    >>> task_figures(SegmentReference(count=9, task="regression", mae=1.5, rmse=2.0, mape=0.1,
    ...                               mape_labelled=8))
    ', MAE 1.5, RMSE 2, MAPE 10.00% (over the 8 rows whose label is not 0)'
    >>> task_figures(SegmentReference(count=9, accuracy=0.9))
    ', accuracy 0.900'
    """
    if seg.task_of() == "classification":
        return f", accuracy {seg.accuracy:.3f}" if seg.accuracy is not None else ""
    out = ""
    if seg.mae is not None:
        out += f", MAE {_num(seg.mae)}"
    if seg.rmse is not None:
        out += f", RMSE {_num(seg.rmse)}"
    if seg.mape is not None:
        out += (
            f", MAPE {100 * seg.mape:.2f}% (over the {seg.mape_labelled} rows whose label is not 0)"
        )
    return out


def _column_line(name: str, ref: ColumnReference) -> str:
    nulls = f"nulls {100 * ref.null_rate:.1f}%"
    if isinstance(ref, NumericReference):
        return (
            f"  {name:<14} numeric      count {ref.count:<8} {nulls:<12} mean {_num(ref.mean)} "
            f"std {_num(ref.std)} min {_num(ref.min)} max {_num(ref.max)} "
            f"({len(ref.probs)} bins)"
        )
    top = ", ".join(f"{k} {100 * v:.1f}%" for k, v in list(ref.probs.items())[:4])
    more = f", +{len(ref.probs) - 4} more" if len(ref.probs) > 4 else ""
    return (
        f"  {name:<14} categorical  count {ref.count:<8} {nulls:<12} "
        f"{len(ref.probs)} categories: {top}{more}"
    )


def describe(profile: ReferenceProfile, segment: str = ALL) -> str:
    """A readable summary: the segments with their rows and outputs, then one segment's
    columns.

    Raises
    ------
    BaselineError
        The profile has no segment ``segment``.
    """
    seg = profile.segment(segment)
    if seg is None:
        raise BaselineError(
            f"baseline {profile.model_id}/{profile.model_version} has no segment {segment!r} "
            f"(segments: {', '.join(profile.segments)})"
        )
    numeric = sum(isinstance(r, NumericReference) for r in seg.features.values())
    lines = [
        f"baseline {profile.model_id}/{profile.model_version}, created {profile.created_at}",
        f"source: {profile.source}",
        f"rows {profile.rows}, bins {profile.bins}, segment dims: "
        f"{', '.join(profile.segment_dims) or '-'}, positive class: "
        f"{profile.positive_class or '-'}, task: {profile.task}",
        f"features: {len(seg.features)} ({numeric} numeric, {len(seg.features) - numeric} "
        "categorical)",
        "",
        f"{'segment':<22} {'rows':>8} {'rate/s':>8} {'accuracy':>9} {'mae':>8} {'rmse':>8} "
        f"{'mape':>8} {'top1':>6}",
    ]
    for key, s in profile.segments.items():
        lines.append(
            f"{key:<22} {s.count:>8} {_num(s.rate_per_s):>8} {_num(s.accuracy):>9} "
            f"{_num(s.mae):>8} {_num(s.rmse):>8} {_num(s.mape):>8} {_num(s.top1_rate):>6}"
        )
    lines += ["", f"segment {segment}:"]
    lines += [_column_line(name, ref) for name, ref in seg.features.items()]
    for name, ref in (("(prediction)", seg.prediction), ("(score)", seg.score)):
        if ref is not None:
            lines.append(_column_line(name, ref))
    if seg.label is not None:
        lines.append(_column_line("(label)", seg.label))
    if seg.calibration is not None:
        acc = " ".join(_num(a) for a in seg.calibration.accuracy)
        lines.append(f"  calibration    accuracy per confidence bin: {acc}")
    cp = seg.class_performance
    if cp is not None:
        who = f"positive class {cp.positive_class}" if cp.positive_class else "macro one-vs-rest"
        figures = ", ".join(f"{m} {v[0]:.3f}" for m, v in cp.realised.items())
        lines.append(
            f"  per class      {', '.join(cp.classes)} ({who}; {cp.labelled} labelled): {figures}"
        )
    return "\n".join(lines)


def _store(cfg: Config) -> BaselineStore:
    from streamproc.redis_client import sync_client

    return BaselineStore(sync_client(cfg.redis), cfg.redis.prefix)


def _redis_call(cfg: Config, what: Any) -> Any:
    import redis

    try:
        return what()
    except redis.RedisError as exc:
        raise BaselineError(f"Redis at {cfg.redis.url}: {exc}") from None


def _dims(text: str | None) -> list[str]:
    return [d.strip() for d in (text or "").split(",") if d.strip()]


def cmd_build(args: argparse.Namespace) -> int:
    """``streamproc baseline build``."""
    from streamproc.config import load_config

    cfg = load_config(args.config)
    began = time.perf_counter()
    common = {
        "segment_dims": _dims(args.segments),
        "bins": args.bins,
        "max_categories": args.max_categories,
        "max_segment_values": args.max_segment_values,
        "positive_class": args.positive_class,
        "task": args.task,
    }
    roles = ColumnRoles(
        args.prediction_column, args.score_column, args.label_column, args.timestamp_column
    )
    plans: list[ColumnPlan] = []
    if args.from_file:
        profile = profile_from_file(
            args.from_file, args.model, args.version, ignore=_dims(args.ignore), roles=roles,
            on_plan=plans.append, **common,
        )  # fmt: skip
        for warning in plans[0].warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        file_only = [
            f"--{name.replace('_', '-')}"
            for name in ("ignore", "prediction_column", "score_column", "label_column",
                         "timestamp_column")
            if getattr(args, name) is not None
        ]  # fmt: skip
        if file_only:
            raise BaselineError(
                f"{', '.join(file_only)}: only for --from-file (a topic's prediction.v1 events "
                "name their outputs; --positive-class applies to both)"
            )
        profile = profile_from_topic(
            cfg,
            args.from_topic,
            args.model,
            args.version,
            from_time=args.from_time,
            to_time=args.to_time,
            partition=args.partition,
            from_offset=args.from_offset,
            to_offset=args.to_offset,
            labels_topic=args.labels_topic,
            label_grace_s=args.label_grace,
            timeout_s=args.timeout,
            **common,
        )
    store = _store(cfg)
    key = _redis_call(cfg, lambda: store.put(profile))
    seg = profile.segments[ALL]
    numeric = sum(isinstance(r, NumericReference) for r in seg.features.values())
    print(
        f"baseline {profile.model_id}/{profile.model_version}: {profile.task} model, "
        f"{profile.rows} rows, "
        f"{len(profile.segments)} segments, {len(seg.features)} features ({numeric} numeric, "
        f"{len(seg.features) - numeric} categorical){task_figures(seg)}; stored at {key} "
        f"in {time.perf_counter() - began:.1f} s"
    )
    if plans:
        print(plans[0].summary())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``streamproc baseline show``."""
    from streamproc.config import load_config

    cfg = load_config(args.config)
    store = _store(cfg)
    if args.version:
        profile = _redis_call(cfg, lambda: store.get(args.model, args.version))
        wanted = f"{args.model}/{args.version}"
    else:
        profile = _redis_call(cfg, lambda: store.latest(args.model))
        wanted = f"{args.model} (latest)"
    if profile is None:
        known = _redis_call(cfg, lambda: store.versions(args.model))
        hint = f"; stored versions: {', '.join(known)}" if known else ""
        raise BaselineError(f"no baseline for {wanted}{hint}")
    print(describe(profile, args.segment))
    versions = _redis_call(cfg, lambda: store.versions(args.model))
    print(f"\nstored versions: {', '.join(versions)}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``streamproc baseline delete``: running workers stop judging against it (its monitors
    warm up again from their next windows, or use a warm-up reference they already had)."""
    from streamproc.config import load_config

    cfg = load_config(args.config)
    store = _store(cfg)
    if not _redis_call(cfg, lambda: store.delete(args.model, args.version)):
        known = _redis_call(cfg, lambda: store.versions(args.model))
        hint = f"; stored versions: {', '.join(known)}" if known else ""
        raise BaselineError(f"no baseline for {args.model}/{args.version}{hint}")
    print(f"deleted baseline {args.model}/{args.version}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``streamproc baseline build|show|delete``."""
    p = sub.add_parser("baseline", help="build, store and show reference baselines")
    actions = p.add_subparsers(dest="action", required=True)

    b = actions.add_parser("build", help="build a baseline from a file or a topic range")
    b.add_argument("--model", required=True, help="model_id")
    b.add_argument("--version", required=True, help="model_version")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-file", help="a .csv, .jsonl or .parquet file, one row per prediction")
    src.add_argument("--from-topic", help="a topic of prediction.v1 events")
    b.add_argument("--segments", help="comma-separated segment dimensions (e.g. country,device)")
    b.add_argument("--bins", type=int, default=DEFAULT_BINS, help="quantile bins (default 10)")
    b.add_argument("--max-categories", type=int, default=DEFAULT_MAX_CATEGORIES)
    b.add_argument(
        "--max-segment-values",
        type=int,
        default=DEFAULT_MAX_SEGMENT_VALUES,
        help="values per dimension with their own segment; the rest are dim=__other__",
    )
    b.add_argument("--positive-class", help="the class whose probability `score` is")
    b.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="what the model does (default: regression when predictions and labels are numbers)",
    )
    b.add_argument("--ignore", help="file: comma-separated columns that are not features")
    b.add_argument("--prediction-column", help="file: the column of predictions (`prediction`)")
    b.add_argument(
        "--score-column",
        help="file: the positive-class probability or confidence column (`score`), or a pattern "
        "with * for the class, one column per class (`proba_*`; default `score_*`)",
    )
    b.add_argument("--label-column", help="file: the column of ground truth (`label`)")
    b.add_argument("--timestamp-column", help="file: the column of prediction times (`timestamp`)")
    b.add_argument("--from-time", help="topic: first record time, RFC 3339")
    b.add_argument("--to-time", help="topic: end record time (exclusive), RFC 3339")
    b.add_argument("--partition", type=int, help="topic: the partition of an offset range")
    b.add_argument("--from-offset", type=int, help="topic: first offset")
    b.add_argument("--to-offset", type=int, help="topic: last offset (inclusive)")
    b.add_argument("--labels-topic", help="topic: label.v1 events to join by prediction_id")
    b.add_argument(
        "--label-grace",
        type=float,
        default=0.0,
        help="topic: seconds of labels read past the range's end (labels arrive late)",
    )
    b.add_argument("--timeout", type=float, default=30.0, help="topic: seconds without progress")
    b.set_defaults(func=cmd_build)

    s = actions.add_parser("show", help="print a stored baseline")
    s.add_argument("--model", required=True, help="model_id")
    s.add_argument("--version", help="model_version (default: the latest stored)")
    s.add_argument("--segment", default=ALL, help="the segment whose columns to list")
    s.set_defaults(func=cmd_show)

    d = actions.add_parser("delete", help="delete a stored baseline (running workers follow)")
    d.add_argument("--model", required=True, help="model_id")
    d.add_argument("--version", required=True, help="model_version")
    d.set_defaults(func=cmd_delete)
