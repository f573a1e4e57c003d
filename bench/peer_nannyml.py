"""Peer parity: NannyML and streamproc on NannyML's own bundled datasets, chunk = window.

Run: ``.venv/bin/python bench/peer_nannyml.py [--dataset multiclass,regression] [--chunk 6000]``

NannyML runs in its own virtualenv (``$STREAMPROC_CACHE/nannyml-venv``, made on first use with ``pip
install nannyml==0.13.1 statsmodels "pandas<3"``; ``--nannyml-python`` to use another), with
``NML_DISABLE_USAGE_LOGGING=1``: nothing phones home. For each dataset it computes, per chunk of
``--chunk`` analysis rows, its univariate drift (Jensen-Shannon, its default, with thresholds from
the reference's chunks), its data-reconstruction (PCA) multivariate drift, and its performance
estimate (CBPE for the multiclass model, DLE for the regression one) beside the realised figures; it
also writes the reference and the analysis rows (targets joined) as CSV.

streamproc then does what a user would: ``baseline build`` from the reference CSV, naming the
columns (``--prediction-column y_pred --score-column 'y_pred_proba_*' --label-column y_true``,
``--ignore id,timestamp``), the analysis rows sent to Kafka as prediction events and their
labels as label events (``prediction_id`` joins them through Redis), one real ``streamproc
worker`` judging them. Event times put chunk ``k`` exactly in window ``k`` (``--window-s`` of
event time per chunk, the rows evenly spread in it; labels one second after their
prediction). The table per chunk: the features each tool flags (streamproc: firing
``feature_drift`` alerts of all traffic in that window, any detector), multivariate drift, and
each performance figure estimated and realised by both.

The targets (issue #13): every feature NannyML flags in the chunks with a real change is
flagged by streamproc too; streamproc flags nothing in the chunks without one (the datasets'
documented design: the second half of each analysis set drifts, ``--drift-from``); and
``|estimated - realised|`` of streamproc is no worse than NannyML's on each metric (mean over
chunks). The verdicts are printed and written, never asserted.

JSON goes to ``bench/out/peer_nannyml-<run id>.json`` and the tables between the
``peer_nannyml`` markers of ``bench/RESULTS.md`` (``--results`` to write elsewhere, ``--no-results``
not at all). Topics, consumer group and Redis keys are ``bench-peer-<run id>-*``, removed at the
end. Kafka and Redis come from ``STREAMPROC_KAFKA_BOOTSTRAP``/``STREAMPROC_REDIS_URL``, else the
local stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamproc.baseline import BaselineStore, ColumnRoles, profile_from_file  # noqa: E402
from streamproc.config import Config, load_config  # noqa: E402
from streamproc.dev.stack import cache_dir  # noqa: E402
from streamproc.kafka import topics  # noqa: E402
from tests.integration.workers import WorkerProcess, read_topic  # noqa: E402

# nannyml 0.13.1 imports statsmodels without declaring it, and its DLE breaks on pandas 3
NANNYML = ("nannyml==0.13.1", "statsmodels", "pandas<3")
T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
MARK = ("<!-- peer_nannyml:start -->", "<!-- peer_nannyml:end -->")

DATASETS: dict[str, dict[str, Any]] = {
    "multiclass": {
        "loader": "load_synthetic_multiclass_classification_dataset",
        "features": ["acq_channel", "app_behavioral_score", "requested_credit_limit",
                     "app_channel", "credit_bureau_score", "stated_income", "is_customer"],
        "classes": ["prepaid_card", "highstreet_card", "upmarket_card"],
        "metrics": ["roc_auc", "f1", "precision", "recall", "specificity", "accuracy"],
        "model": "nml-multiclass",
    },
    "regression": {
        "loader": "load_synthetic_car_price_dataset",
        "features": ["car_age", "km_driven", "price_new", "accident_count", "door_count",
                     "fuel", "transmission"],
        "classes": None,
        "metrics": ["mae", "rmse", "mape"],
        "model": "nml-car-price",
    },
}  # fmt: skip

# Runs in NannyML's interpreter: numpy/pandas/nannyml only, results as JSON on stdout.
NML_SCRIPT = r"""
import json, sys
import nannyml as nml

name, chunk, out, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
ref, ana, tgt = getattr(nml, spec["loader"])()
ana = ana.merge(tgt, on="id") if "y_true" not in ana.columns else ana
ref.to_csv(f"{out}/{name}-reference.csv", index=False)
ana.to_csv(f"{out}/{name}-analysis.csv", index=False)
feats = spec["features"]
res = {"chunks": [], "metrics": spec["metrics"]}
uni = nml.UnivariateDriftCalculator(column_names=feats, chunk_size=chunk).fit(ref)
u = uni.calculate(ana).filter(period="analysis").to_df()
mv = nml.DataReconstructionDriftCalculator(column_names=feats, chunk_size=chunk).fit(ref)
m = mv.calculate(ana).filter(period="analysis").to_df()
if spec["classes"]:
    est = nml.CBPE(
        y_pred_proba={c: f"y_pred_proba_{c}" for c in spec["classes"]}, y_pred="y_pred",
        y_true="y_true", problem_type="classification_multiclass", metrics=spec["metrics"],
        chunk_size=chunk,
    )
else:
    est = nml.DLE(
        feature_column_names=feats, y_pred="y_pred", y_true="y_true", metrics=spec["metrics"],
        chunk_size=chunk,
    )
e = est.fit(ref).estimate(ana).filter(period="analysis").to_df()
for i in range(len(u)):
    row = {
        "flagged": sorted(f for f in feats if bool(u[(f, "jensen_shannon", "alert")].iloc[i])),
        "reconstruction_error": float(m[("reconstruction_error", "value")].iloc[i]),
        "multivariate_drift": bool(m[("reconstruction_error", "alert")].iloc[i]),
        "estimated": {k: float(e[(k, "value")].iloc[i]) for k in spec["metrics"]},
        "realised": {k: float(e[(k, "realized")].iloc[i]) for k in spec["metrics"]},
    }
    res["chunks"].append(row)
print(json.dumps(res))
"""


def nannyml_python(given: str | None) -> str:
    """NannyML's interpreter: ``given``, else its own virtualenv (made on first use)."""
    if given:
        return given
    venv = cache_dir() / "nannyml-venv"
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    if not ready.exists() or ready.read_text().split() != list(NANNYML):
        print(f"making {venv} (pip install {' '.join(NANNYML)}) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *NANNYML], check=True)
        ready.write_text(" ".join(NANNYML) + "\n")
    return str(python)


def run_nannyml(python: str, name: str, chunk: int, out: Path) -> dict[str, Any]:
    env = {**os.environ, "NML_DISABLE_USAGE_LOGGING": "1", "PYTHONWARNINGS": "ignore"}
    spec = json.dumps(DATASETS[name])
    done = subprocess.run(
        [python, "-c", NML_SCRIPT, name, str(chunk), str(out), spec],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"NannyML failed on {name}:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- streamproc ----------------------------------------------------------------------------------


def _cell(value: str) -> Any:
    if value == "":
        return None
    try:
        x = float(value)
    except ValueError:
        return {"True": True, "False": False}.get(value, value)
    return int(x) if x.is_integer() and "." not in value else x


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    import csv

    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            yield {k: _cell(v) for k, v in row.items()}


def events(
    name: str, path: Path, chunk: int, window_s: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prediction and label events of the analysis rows, chunk ``k`` in window ``k``."""
    spec = DATASETS[name]
    preds, labels = [], []
    for i, row in enumerate(_rows(path)):
        k, j = divmod(i, chunk)
        t = T0 + k * window_s + j * window_s / chunk
        pid = f"{name}-{row['id']}"
        event: dict[str, Any] = {
            "prediction_id": pid,
            "model_id": spec["model"],
            "model_version": "1",
            "timestamp": t,
            "features": {f: row[f] for f in spec["features"]},
            "prediction": row["y_pred"],
        }
        if spec["classes"]:
            event["scores"] = {c: float(row[f"y_pred_proba_{c}"]) for c in spec["classes"]}
        preds.append(event)
        labels.append({"prediction_id": pid, "model_id": spec["model"], "label": row["y_true"],
                       "timestamp": t + 1.0})  # fmt: skip
    return preds, labels


def produce(cfg: Config, topic: str, docs: Sequence[dict[str, Any]], per: int = 500) -> None:
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20})
    for n, start in enumerate(range(0, len(docs), per)):
        producer.produce(topic, orjson.dumps(docs[start : start + per]), partition=n % 6)
        producer.poll(0)
    if producer.flush(60):
        raise SystemExit(f"could not deliver every message to {topic}")


PROFILES: dict[str, dict[str, str]] = {
    "defaults": {},
    # every statistically certain shift flagged, as info (no Prometheus rule pages on info)
    "info tier": {"STREAMPROC_MONITORING_PSI": '{"warning": 0.1, "critical": 0.25, "info": 0}'},
}


def active(alerts: Sequence[dict[str, Any]], starts: Sequence[str]) -> list[dict[str, str]]:
    """Per window start, the signals of all traffic firing then (an alert fires once when its
    episode opens or escalates and stays firing until its ``resolved``): subject -> the
    highest severity among its detectors."""
    rank = {"info": 1, "warning": 2, "critical": 3}
    episodes: dict[tuple[str, str], list[tuple[str, str | None]]] = {}  # -> [(start, sev)]
    for a in alerts:
        if a["segment"] != {}:
            continue
        subject = a["feature"] or f"{a['kind']}/{a['detector']}"
        key = (subject, a["detector"])
        sev = a["severity"] if a["status"] == "firing" else None
        episodes.setdefault(key, []).append((a["window"]["start"], sev))
    out: list[dict[str, str]] = [{} for _ in starts]
    for (subject, _), changes in episodes.items():
        for i, start in enumerate(starts):
            now = None
            for at, sev in changes:
                if at <= start:
                    now = sev
            if now is not None and rank[now] > rank.get(out[i].get(subject, ""), 0):
                out[i][subject] = now
    return out


def run_streamproc(
    cfg: Config,
    name: str,
    chunk: int,
    out: Path,
    window_s: float,
    timeout: float,
    profile_env: dict[str, str],
) -> dict[str, Any]:
    spec = DATASETS[name]
    roles = ColumnRoles(
        prediction="y_pred",
        score="y_pred_proba_*" if spec["classes"] else None,
        label="y_true",
        timestamp="timestamp",
    )
    profile = profile_from_file(
        out / f"{name}-reference.csv", spec["model"], "1", [], roles=roles, ignore=["id"]
    )
    client = redis.Redis.from_url(cfg.redis.url)
    BaselineStore(client, cfg.redis.key_prefix).put(_without_rate(profile))
    preds, labels = events(name, out / f"{name}-analysis.csv", chunk, window_s)
    env = {
        "STREAMPROC_MONITORING_WINDOW_S": str(window_s),
        "STREAMPROC_MONITORING_TICK_S": str(window_s / 12),
        "STREAMPROC_MONITORING_LATENESS_S": "5",
        "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "10",
        **profile_env,
    }
    n_windows = math.ceil(len(preds) / chunk)
    worker = WorkerProcess(cfg, out, **env)
    try:
        produce(cfg, cfg.topics.predictions, preds)
        produce(cfg, cfg.topics.labels, labels)
        # every window judged: the last one closes once the stream is idle
        worker.wait_for(
            lambda: worker.metric("streamproc_windows_closed_total") >= n_windows, timeout,
            f"{n_windows} windows judged",
        )  # fmt: skip
        worker.wait_until_judged(timeout)
    finally:
        worker.stop()
    alerts = read_topic(cfg, cfg.topics.alerts)
    metrics = read_topic(cfg, cfg.topics.metrics)
    starts = [_iso(T0 + k * window_s) for k in range(n_windows)]
    features = set(spec["features"])
    chunks = []
    for start, firing in zip(starts, active(alerts, starts), strict=True):
        recs = [r for r in metrics if r["segment"] == {} and r["window"]["start"] == start]
        row: dict[str, Any] = {
            "flagged": sorted(f for f in firing if f in features),
            "severity": {f: sev for f, sev in firing.items() if f in features},
            "multivariate_drift": any(f.startswith("multivariate_drift/") for f in firing),
            "reconstruction_error": next(
                (r["outputs"].get("reconstruction_error") for r in recs if r.get("outputs")), None
            ),
            "other_alerts": sorted(f for f in firing if f not in features),
            "estimated": {},
            "realised": {},
            "features": next((r["features"] for r in recs if r.get("features")), {}),
            "reference": sorted({r["reference"] for r in recs}),
            "count": sum(r["count"] for r in recs),
        }
        for r in recs:
            cp = r.get("class_performance")
            if cp:
                side = "estimated" if cp["source"] == "estimated" else "realised"
                row[side].update({m: b["value"] for m, b in cp["metrics"].items()})
            for m in ("mae", "rmse", "mape"):
                if r["performance"].get(m) is not None:
                    row["realised"][m] = r["performance"][m]
                if r["outputs"].get(f"estimated_{m}") is not None:
                    row["estimated"][m] = r["outputs"][f"estimated_{m}"]
        chunks.append(row)
    brief = [
        {k: a[k] for k in ("status", "severity", "kind", "detector", "feature", "segment")}
        | {"window": a["window"]["start"]}
        for a in alerts
    ]
    return {"chunks": chunks, "alerts": brief, "metrics": len(metrics)}


def _without_rate(profile: Any) -> Any:
    """NannyML's timestamps are not the bench's event times: no reference rate (the volume
    check then compares windows with the recent ones)."""
    import msgspec

    segs = {k: msgspec.structs.replace(s, rate_per_s=None) for k, s in profile.segments.items()}
    return msgspec.structs.replace(profile, segments=segs)


def _iso(t: float) -> str:
    from streamproc.judge.alerts import iso

    return iso(t)


# -- comparison ----------------------------------------------------------------------------------


def verdicts(nml: dict[str, Any], sp: dict[str, Any], drift_from: int) -> dict[str, Any]:
    missed, spurious = [], []
    for k, (a, b) in enumerate(zip(nml["chunks"], sp["chunks"], strict=False)):
        if k >= drift_from:
            missed += [f"chunk {k}: {f}" for f in a["flagged"] if f not in b["flagged"]]
        else:
            spurious += [f"chunk {k}: {f}" for f in b["flagged"]]
    errors: dict[str, dict[str, float | None]] = {}
    for m in nml["metrics"]:
        per: dict[str, float | None] = {}
        for who, res in (("nannyml", nml), ("streamproc", sp)):
            gaps = [
                abs(c["estimated"][m] - c["realised"][m])
                for c in res["chunks"]
                if c["estimated"].get(m) is not None and c["realised"].get(m) is not None
            ]
            per[who] = sum(gaps) / len(gaps) if gaps else None
        errors[m] = per
    return {
        "missed_nannyml_flags": missed,
        "flags_without_change": spurious,
        "mean_abs_estimate_error": errors,
        "estimate_no_worse": {
            m: (
                e["streamproc"] is not None
                and e["nannyml"] is not None
                and e["streamproc"] <= e["nannyml"] + 1e-9
            )
            for m, e in errors.items()
        },
    }


def _f(x: Any, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Run {result['run_id']} ({result['date']}), chunk = window = {result['chunk']} rows; "
        f"NannyML {result['nannyml']}. `.venv/bin/python bench/peer_nannyml.py`",
        "",
    ]
    for name, d in result["datasets"].items():
        nml, runs = d["nannyml"], d["streamproc"]
        sp = runs["defaults"]
        metrics = nml["metrics"]
        lines += [f"### {name}", ""]
        head = ["chunk", "NannyML flags"]
        head += [f"streamproc flags ({p})" for p in runs]
        head.append("multivariate: NML (error) / sp (error)")
        for m in metrics:
            head += [f"{m} est NML", f"{m} est sp", f"{m} realised"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for k, a in enumerate(nml["chunks"]):
            b = sp["chunks"][k] if k < len(sp["chunks"]) else {"flagged": [], "estimated": {},
                                                               "realised": {}}  # fmt: skip
            cells = [str(k), ", ".join(a["flagged"]) or "-"]
            for r in runs.values():
                c = r["chunks"][k] if k < len(r["chunks"]) else {"severity": {}}
                shown = [f if sev != "info" else f"{f} (info)" for f, sev in
                         sorted(c["severity"].items())]  # fmt: skip
                cells.append(", ".join(shown) or "-")
            err = b.get("reconstruction_error")
            cells.append(
                f"{'yes' if a['multivariate_drift'] else 'no'} ({a['reconstruction_error']:.3f}) / "
                f"{'yes' if b.get('multivariate_drift') else 'no'}"
                + (f" ({err:.3f})" if isinstance(err, int | float) else "")
            )
            for m in metrics:
                real = b["realised"].get(m, a["realised"].get(m))
                cells += [_f(a["estimated"].get(m)), _f(b["estimated"].get(m)), _f(real)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for p, v in d["verdicts"].items():
            lines += [
                f"- {p}: NannyML flags in drifted chunks (from {d['drift_from']}) that streamproc "
                f"missed: {len(v['missed_nannyml_flags'])} "
                f"({'; '.join(v['missed_nannyml_flags']) or 'none'}); flags in chunks without a "
                f"change: {len(v['flags_without_change'])} "
                f"({'; '.join(v['flags_without_change']) or 'none'})",
            ]
        v = d["verdicts"]["defaults"]
        for m, e in v["mean_abs_estimate_error"].items():
            lines.append(
                f"- mean \\|estimated - realised\\| {m}: streamproc {_f(e['streamproc'], '.4f')}, "
                f"NannyML {_f(e['nannyml'], '.4f')}"
                + (" (no worse)" if v["estimate_no_worse"][m] else "")
            )
        lines.append("")
    return "\n".join(lines)


def write_results(path: Path, text: str) -> None:
    body = path.read_text() if path.exists() else ""
    block = f"{MARK[0]}\n## Peer parity with NannyML (`peer_nannyml.py`)\n\n{text}\n{MARK[1]}\n"
    if MARK[0] in body and MARK[1] in body:
        head, rest = body.split(MARK[0], 1)
        body = head + block + rest.split(MARK[1], 1)[1].lstrip("\n")
    else:
        body = body.rstrip("\n") + "\n\n" + block
    path.write_text(body)


def _bench_config(run_id: str) -> Config:
    prefix = f"bench-peer-{run_id}"
    env = {k: v for k, v in os.environ.items() if k.startswith("STREAMPROC_")}
    env.update({"STREAMPROC_REDIS_KEY_PREFIX": prefix, "STREAMPROC_WORKER_APP_ID": prefix})
    for role in ("predictions", "labels", "alerts", "metrics", "deadletter"):
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = f"{prefix}-{role}"
    cfg = load_config(env=env)
    topics.apply(cfg, topics.load_topics(cfg))
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="multiclass,regression")
    p.add_argument("--chunk", type=int, default=6000)
    p.add_argument("--window-s", type=float, default=600.0)
    p.add_argument("--drift-from", type=int, default=5, help="first chunk with a real change")
    p.add_argument("--nannyml-python")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--no-results", action="store_true")
    args = p.parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    python = nannyml_python(args.nannyml_python)
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('nannyml'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    result: dict[str, Any] = {
        "run_id": run_id,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "chunk": args.chunk,
        "nannyml": version,
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="peer-nannyml-") as tmp:
        out = Path(tmp)
        for name in args.dataset.split(","):
            print(f"{name}: NannyML ...", file=sys.stderr)
            nml = run_nannyml(python, name, args.chunk, out)
            runs = {}
            for i, (label, env) in enumerate(PROFILES.items()):
                print(f"{name}: streamproc worker, {label} ...", file=sys.stderr)
                cfg = _bench_config(f"{run_id}-{name}-{i}")
                try:
                    runs[label] = run_streamproc(
                        cfg, name, args.chunk, out, args.window_s, args.timeout, env
                    )
                finally:
                    _cleanup(cfg)
            result["datasets"][name] = {
                "nannyml": nml,
                "streamproc": runs,
                "drift_from": args.drift_from,
                "verdicts": {
                    label: verdicts(nml, sp, args.drift_from) for label, sp in runs.items()
                },
            }
    text = markdown(result)
    print(text)
    dest = ROOT / "bench" / "out"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"peer_nannyml-{run_id}.json").write_text(json.dumps(result, indent=1))
    if not args.no_results:
        write_results(Path(args.results), text)
    return 0


def _cleanup(cfg: Config) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(cfg.kafka.librdkafka())
    names = [n for n in admin.list_topics(timeout=10).topics if n.startswith("bench-peer-")]
    names = [n for n in names if cfg.redis.key_prefix in n]
    if names:
        for f in admin.delete_topics(names).values():
            with contextlib.suppress(Exception):
                f.result(30)
    import ingest_throughput as ib  # a sibling script, not a package

    prefix = cfg.redis.key_prefix
    ib.delete_keys(redis.Redis.from_url(cfg.redis.url), [f"{prefix}*", f"{{{prefix}*"])


if __name__ == "__main__":
    raise SystemExit(main())
