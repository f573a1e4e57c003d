"""Reference files: CSV, JSON Lines and Parquet read into typed columns, then into a profile.

:func:`read_table` types a file's columns as :class:`~streamproc.baseline.ProfileBuilder` does
(numbers as float64 with NaN nulls, anything else as category strings);
:func:`profile_from_file` sorts the columns into features, outputs, segments and time, and
builds the profile.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from streamproc.baseline.builder import (
    ProfileBuilder,
    as_categories,
    nans,
    object_array,
    typed_column,
)
from streamproc.baseline.columns import RESERVED_COLUMNS, ColumnPlan, ColumnRoles, plan_columns
from streamproc.baseline.profile import (
    DEFAULT_BINS,
    DEFAULT_MAX_CATEGORIES,
    DEFAULT_MAX_SEGMENT_VALUES,
    BaselineError,
    ReferenceProfile,
    Task,
)

__all__ = ["FILE_TYPES", "RESERVED_COLUMNS", "profile_from_file", "read_table"]

FILE_TYPES: Final = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
"""Reference file suffixes :func:`profile_from_file` reads."""


def _csv_column(cells: Sequence[str]) -> NDArray[Any]:
    """A CSV column: numbers when every non-empty cell parses as one, else category strings."""
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    distinct = set(cells)
    if "" in distinct:
        try:
            return np.array([c if c else "nan" for c in cells], dtype=np.float64)
        except ValueError:
            pass
    if {c.lower() for c in distinct} <= {"true", "false", ""}:
        return object_array([c.lower() if c else None for c in cells])  # booleans
    return object_array([c if c else None for c in cells])


def _read_csv(path: Path) -> dict[str, NDArray[Any]]:
    """CSV through pyarrow's parser when it is installed (several times faster), else through
    the csv module; both give the same columns (see :func:`_csv_column`)."""
    try:
        return _read_csv_arrow(path)
    except ImportError:
        return _read_csv_python(path)
    except _ArrowFallback:
        # an empty, ragged or non-UTF-8 file: the csv module's reading names the problem
        return _read_csv_python(path)


class _ArrowFallback(Exception):
    pass


def _read_csv_arrow(path: Path) -> dict[str, NDArray[Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            # every column as text, so typing is ours: the same as the csv module path
            convert_options=pcsv.ConvertOptions(
                column_types=_csv_header(path),
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError, _ArrowFallback) as exc:
        raise _ArrowFallback(str(exc)) from None
    _check_header(path, table.column_names)
    out: dict[str, NDArray[Any]] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        try:
            # Arrow's number syntax is a subset of numpy's, which decides when Arrow refuses.
            out[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            out[name] = _csv_column(pc.fill_null(col, "").to_pylist())
    return out


def _csv_header(path: Path) -> dict[str, Any]:
    import pyarrow as pa

    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise _ArrowFallback("no header")
    return {name: pa.string() for name in header}


def _read_csv_python(path: Path) -> dict[str, NDArray[Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise BaselineError(f"{path}: the file is empty")
        rows = list(filter(None, reader))  # blank lines are no rows
    _check_header(path, header)
    if set(map(len, rows)) - {len(header)}:
        i, row = next((i, r) for i, r in enumerate(rows, start=1) if len(r) != len(header))
        raise BaselineError(f"{path}: data row {i} has {len(row)} fields, the header {len(header)}")
    if not rows:
        return {name: nans(0) for name in header}
    return {
        name: _csv_column(cells)
        for name, cells in zip(header, zip(*rows, strict=True), strict=True)
    }


def _check_header(path: Path, names: Sequence[str]) -> None:
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise BaselineError(f"{path}: duplicate columns {', '.join(dupes)}")


def _read_jsonl(path: Path) -> dict[str, NDArray[Any]]:
    import orjson

    rows: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise BaselineError(f"{path}: line {line_no} is not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise BaselineError(f"{path}: line {line_no} is not a JSON object")
            rows.append(row)
    names = list(dict.fromkeys(itertools.chain.from_iterable(rows)))  # keys, first seen first
    out: dict[str, NDArray[Any]] = {}
    for name in names:
        try:
            out[name] = typed_column([row.get(name) for row in rows])
        except BaselineError as exc:
            raise BaselineError(f"{path}: column {name!r}: {exc}") from None
    return out


def _read_parquet(path: Path) -> dict[str, NDArray[Any]]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise BaselineError(
            f"{path}: reading Parquet needs pyarrow; install it with "
            "pip install 'streamproc[parquet]' (or pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BaselineError(f"{path}: not a readable Parquet file: {exc}") from None
    _check_header(path, table.column_names)
    out: dict[str, NDArray[Any]] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        kind = col.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            out[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_timestamp(kind):
            seconds = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us", "UTC")), pa.int64()), 1e6)
            out[name] = pc.cast(seconds, pa.float64()).to_numpy(zero_copy_only=False)
        else:
            try:
                out[name] = typed_column(col.to_pylist())
            except BaselineError as exc:
                raise BaselineError(f"{path}: column {name!r}: {exc}") from None
    return out


def read_table(path: str | Path) -> dict[str, NDArray[Any]]:
    """Read a reference file into typed columns (float64 with NaN nulls, or category strings).

    Raises
    ------
    BaselineError
        Missing file, unknown suffix, unreadable content, or pyarrow missing for Parquet.
    """
    p = Path(path)
    kind = FILE_TYPES.get(p.suffix.lower())
    if kind is None:
        raise BaselineError(
            f"{p}: unknown file type {p.suffix or '(no suffix)'!r}; use {', '.join(FILE_TYPES)}"
        )
    if not p.is_file():
        raise BaselineError(f"{p}: no such file")
    try:
        if kind == "csv":
            return _read_csv(p)
        if kind == "jsonl":
            return _read_jsonl(p)
        return _read_parquet(p)
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _times(column: NDArray[Any], where: str) -> NDArray[np.float64]:
    if column.dtype != object:
        return column
    from streamproc.contracts import event_time

    out = nans(column.size)
    for i, v in enumerate(column.tolist()):
        if v is None:
            continue
        try:
            out[i] = float(v)  # epoch seconds among RFC 3339 texts
        except ValueError:
            pass
        else:
            continue
        try:
            out[i] = event_time(v, None)
        except ValueError:
            raise BaselineError(
                f"{where}: timestamp {v!r} (row {i + 1}) is neither RFC 3339 nor epoch seconds"
            ) from None
    return out


def profile_from_file(
    path: str | Path,
    model_id: str,
    model_version: str,
    segment_dims: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    max_segment_values: int = DEFAULT_MAX_SEGMENT_VALUES,
    positive_class: str | None = None,
    task: Task | None = None,
    ignore: Sequence[str] = (),
    roles: ColumnRoles | None = None,
    on_plan: Callable[[ColumnPlan], None] | None = None,
) -> ReferenceProfile:
    """Build a profile from a CSV, JSON Lines or Parquet file of predictions.

    One row per prediction. Columns ``prediction``, ``label``, ``timestamp`` (RFC 3339 or
    epoch seconds), and either ``score`` (the positive-class probability) or ``score_<class>``
    (one probability per class: ``score`` becomes the largest, or that of ``positive_class``
    when given; ``prediction`` defaults to the argmax) are outputs, or the columns ``roles``
    names for them; the ``segment_dims`` columns are segment dimensions; ``ignore`` columns
    are skipped; every other column is a feature. In CSV an empty cell is a null and a column
    of numbers is numeric. ``on_plan`` receives what became what, with warnings about columns
    that look misplaced (:func:`~streamproc.baseline.columns.plan_columns`), before the build.

    Raises
    ------
    BaselineError
        Missing or unreadable file, unknown type, a segment column that is not there, both
        ``score`` and ``score_<class>`` columns, a column of ``roles`` that is not there, or no
        rows.
    """
    p = Path(path)
    table = read_table(p)
    n = len(next(iter(table.values()))) if table else 0
    if n == 0:
        raise BaselineError(f"{p}: no rows")
    missing = [d for d in segment_dims if d not in table]
    if missing:
        raise BaselineError(
            f"{p}: no column {missing[0]!r} for --segments (columns: {', '.join(table)})"
        )
    table, plan = plan_columns(table, str(p), segment_dims, ignore, roles or ColumnRoles())
    if on_plan is not None:
        on_plan(plan)
    class_cols = {k[len("score_") :]: k for k in table if k.startswith("score_") and k != "score_"}
    if class_cols and "score" in table:
        raise BaselineError(f"{p}: has both a 'score' and 'score_<class>' columns; keep one kind")
    skip = {*RESERVED_COLUMNS, *segment_dims, *class_cols.values(), *ignore}
    prediction = table.get("prediction")
    score = table.get("score")
    confidence = None
    scores: dict[str, NDArray[np.float64]] | None = None
    where = str(p)
    if score is not None and score.dtype == object:
        raise BaselineError(f"{p}: column 'score' must hold numbers")
    if class_cols:
        classes = list(class_cols)
        probs = np.column_stack([_float_col(table, class_cols[c], where) for c in classes])
        known = np.isfinite(probs)
        filled = np.where(known, probs, -math.inf)
        best = filled.argmax(axis=1)
        any_known = known.any(axis=1)
        top = np.where(any_known, filled[np.arange(n), best], math.nan)
        if prediction is None:
            prediction = object_array(
                [
                    classes[b] if k else None
                    for b, k in zip(best.tolist(), any_known.tolist(), strict=True)
                ]
            )
        index = {c: i for i, c in enumerate(classes)}
        chosen = np.array(
            [index.get(v, -1) for v in as_categories(prediction).tolist()], dtype=np.int64
        )
        confidence = np.where(chosen >= 0, probs[np.arange(n), np.maximum(chosen, 0)], top)
        confidence = np.where(np.isfinite(confidence), confidence, top)
        score = probs[:, index[positive_class]] if positive_class in index else top
        if positive_class not in index:
            positive_class = None
        scores = {c: probs[:, i] for c, i in index.items()}
    builder = ProfileBuilder(
        model_id,
        model_version,
        segment_dims,
        bins=bins,
        max_categories=max_categories,
        max_segment_values=max_segment_values,
        positive_class=positive_class,
        task=task,
    )
    builder.add_columns(
        {name: col for name, col in table.items() if name not in skip},
        prediction=prediction,
        score=score,
        confidence=confidence,
        label=table.get("label"),
        segments={d: table[d] for d in segment_dims},
        event_time=_times(table["timestamp"], where) if "timestamp" in table else None,
        scores=scores,
    )
    return builder.build(source=str(p.resolve()))


def _float_col(table: Mapping[str, NDArray[Any]], name: str, where: str) -> NDArray[np.float64]:
    col = table[name]
    if col.dtype == object:
        raise BaselineError(f"{where}: column {name!r} must hold numbers")
    return col
