"""Which column of a reference file is what: outputs, time, segments, features, and the
columns that look misplaced.

A file as it comes from a training pipeline rarely uses streamproc's names (``prediction``,
``score``, ``label``, ``timestamp``): NannyML's car-loan set has ``y_pred``, ``y_pred_proba``,
``repaid`` and an ``id``. :class:`ColumnRoles` names them; :func:`plan_columns` maps them to
their roles and warns, with the option that fixes it, about a feature column that looks like an
id (a distinct value per row), the label, the prediction, the score or the time under another
name, or a constant. The plan's :meth:`ColumnPlan.summary` says what became what.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from streamproc.baseline.builder import as_categories
from streamproc.baseline.profile import BaselineError

__all__ = ["RESERVED_COLUMNS", "ColumnPlan", "ColumnRoles", "plan_columns"]

RESERVED_COLUMNS: Final = ("prediction", "label", "score", "timestamp")
"""File columns that are not features (nor are ``score_<class>`` and segment columns)."""

MIN_ROWS_FOR_ID: Final = 50
"""A column is called an id only from this many rows (a few rows are all distinct anyway)."""

_NAMES: Final = {
    "label": re.compile(
        r"^(y|y_?true|target|labels?|actual|ground_?truth|truth|outcome)$|_(label|target)$"
    ),
    "prediction": re.compile(r"^(y_?pred|y_?hat|pred|preds|predicted|predictions?)$"),
    "score": re.compile(r"(^|_)(proba|probas|probability|probabilities|prob|score|scores)($|_)"),
    "timestamp": re.compile(
        r"^(time|ts|date|datetime|event_?time|timestamps?|created|created_?at)$|_(at|time|ts)$"
    ),
}
_ID_NAME: Final = re.compile(r"(^|_)(id|uuid|guid|key)$", re.IGNORECASE)
_ISO_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]|$)")
_OPTION: Final = {
    "prediction": "--prediction-column",
    "score": "--score-column",
    "label": "--label-column",
    "timestamp": "--timestamp-column",
}


@dataclass(frozen=True)
class ColumnRoles:
    """The file's columns for each output (``None``: the conventional name).

    ``score`` is either one column (the positive-class probability of a binary classifier, or
    the predicted class's confidence) or a pattern with one ``*`` for the class, one column per
    class (``proba_*`` takes ``proba_yes`` and ``proba_no``), as ``score_<class>`` columns are.
    """

    prediction: str | None = None
    score: str | None = None
    label: str | None = None
    timestamp: str | None = None


@dataclass
class ColumnPlan:
    """What each column of a file became, and what looked wrong."""

    roles: dict[str, str] = field(default_factory=dict)  # role -> the file's column
    class_columns: dict[str, str] = field(default_factory=dict)  # class -> the file's column
    segments: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line per kind of column.

        >>> plan = ColumnPlan({"prediction": "y_pred", "label": "repaid"}, {}, ["region"],
        ...                   ["id"], ["income", "age"])
        >>> print(plan.summary())
        outputs: prediction=y_pred, label=repaid (no score, no timestamp)
        segments: region
        ignored: id
        features (2): income, age
        """
        outputs = [f"{role}={self.roles[role]}" for role in RESERVED_COLUMNS if role in self.roles]
        if self.class_columns:
            outputs.append(
                "scores per class: "
                + ", ".join(f"{c}={col}" for c, col in sorted(self.class_columns.items()))
            )
        absent = [
            f"no {r}"
            for r in RESERVED_COLUMNS
            if r not in self.roles and not (r == "score" and self.class_columns)
        ]
        lines = [
            f"outputs: {', '.join(outputs) or 'none'}"
            + (f" ({', '.join(absent)})" if absent else "")
        ]
        if self.segments:
            lines.append(f"segments: {', '.join(self.segments)}")
        if self.ignored:
            lines.append(f"ignored: {', '.join(self.ignored)}")
        shown = ", ".join(self.features[:12]) + (", ..." if len(self.features) > 12 else "")
        lines.append(f"features ({len(self.features)}): {shown}")
        return "\n".join(lines)


def plan_columns(
    table: Mapping[str, NDArray[Any]],
    where: str,
    segment_dims: Sequence[str] = (),
    ignore: Sequence[str] = (),
    roles: ColumnRoles | None = None,
) -> tuple[dict[str, NDArray[Any]], ColumnPlan]:
    """``table`` with its output columns under streamproc's names (``prediction``, ``score``
    or ``score_<class>``, ``label``, ``timestamp``), and the plan that says what became what.

    Raises
    ------
    BaselineError
        A named column that is not there, a pattern that matches none, a column given two
        roles, or a named column whose conventional name is another column of the file.
    """
    roles = roles or ColumnRoles()
    columns = list(table)
    plan = ColumnPlan(segments=list(segment_dims), ignored=[c for c in ignore if c in table])
    for name in ignore:
        if name not in table:
            raise BaselineError(f"{where}: no column {name!r} for --ignore ({_listed(columns)})")
    renamed: dict[str, str] = {}  # the file's column -> streamproc's name
    for role in RESERVED_COLUMNS:
        given = getattr(roles, role)
        if given is None:
            if role in table:
                plan.roles[role] = role
            continue
        if role == "score" and "*" in given:
            matched = [c for c in columns if fnmatch.fnmatchcase(c, given)]
            if not matched:
                raise BaselineError(
                    f"{where}: no column matches --score-column {given!r} ({_listed(columns)})"
                )
            head, tail = given.split("*", 1)
            for col in matched:
                cls = col[len(head) : len(col) - len(tail) if tail else None]
                plan.class_columns[cls] = col
                renamed[col] = f"score_{cls}"
            continue
        if given not in table:
            raise BaselineError(
                f"{where}: no column {given!r} for {_OPTION[role]} ({_listed(columns)})"
            )
        if given != role and role in table:
            raise BaselineError(
                f"{where}: {_OPTION[role]} {given!r}, but the file has a {role!r} column too; "
                f"--ignore {role} or rename it"
            )
        plan.roles[role] = given
        renamed[given] = role
    if not plan.class_columns:
        plan.class_columns = {
            c[len("score_") :]: c for c in columns if c.startswith("score_") and c != "score_"
        }
    taken: dict[str, str] = {}
    for what, names in (
        ("an output", [*plan.roles.values(), *plan.class_columns.values()]),
        ("a segment", list(segment_dims)),
        ("ignored", list(ignore)),
    ):
        for name in names:
            if name in taken and taken[name] != what:
                raise BaselineError(f"{where}: column {name!r} is both {taken[name]} and {what}")
            taken[name] = what
    out = {renamed.get(c, c): col for c, col in table.items()}
    plan.features = [c for c in columns if c not in taken and renamed.get(c, c) == c]
    plan.features = [c for c in plan.features if c not in RESERVED_COLUMNS]
    plan.warnings = _warnings(table, plan)
    return out, plan


def _listed(columns: Sequence[str]) -> str:
    shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
    return f"columns: {shown}"


def _warnings(table: Mapping[str, NDArray[Any]], plan: ColumnPlan) -> list[str]:
    """What looks misplaced among the features, and what is missing, each with its fix."""
    out: list[str] = []
    n = len(next(iter(table.values()))) if table else 0
    # The prediction the values of other columns are compared with: the named one, else a
    # feature named like one (its own warning says so).
    guess = plan.roles.get("prediction") or next(
        (c for c in plan.features if _NAMES["prediction"].search(c.lower())), None
    )
    prediction = table[guess] if guess is not None else None
    seen: dict[str, list[str]] = {}
    for name in plan.features:
        col = table[name]
        role = _looks_like(name, col, prediction if name != guess else None, plan)
        if role is not None:
            seen.setdefault(role, []).append(name)
            continue
        distinct = _distinct(col)
        if distinct <= 1:
            out.append(f"column {name!r} is constant: it cannot drift (--ignore {name})")
        elif n >= MIN_ROWS_FOR_ID and distinct == n and _id_like(name, col):
            out.append(
                f"column {name!r} has a different value in every row (an id?): a feature of "
                f"ids is new in every window (--ignore {name})"
            )
    for role in RESERVED_COLUMNS:
        names = seen.get(role, [])
        pattern = _per_class_pattern(names) if role == "score" else None
        if pattern is not None:
            out.append(
                f"columns {', '.join(names)} look like per-class scores, not features: "
                f"--score-column '{pattern}'"
            )
            continue
        out += [
            f"column {name!r} looks like the {role}, not a feature: "
            f"{_OPTION[role]} {name} (or --ignore {name})"
            for name in names
        ]
    if "label" not in plan.roles and "label" not in seen:
        out.append(
            "no label column: no accuracy, no calibration for CBPE estimates (--label-column NAME)"
        )
    if "prediction" not in plan.roles and not plan.class_columns and "prediction" not in seen:
        out.append("no prediction column: no prediction drift (--prediction-column NAME)")
    return out


def _per_class_pattern(names: Sequence[str]) -> str | None:
    """``prefix_*`` when several score columns share a prefix up to their last ``_``.

    >>> _per_class_pattern(["y_proba_card_a", "y_proba_card_b", "y_proba_cash"])
    'y_proba_*'
    >>> _per_class_pattern(["proba"]), _per_class_pattern(["p_a", "q_b"])
    (None, None)
    """
    if len(names) < 2:
        return None
    common = os.path.commonprefix(list(names))  # noqa: RUF071 (characters, not paths)
    prefix = common[: common.rfind("_") + 1]
    return prefix + "*" if prefix else None


def _looks_like(
    name: str, col: NDArray[Any], prediction: NDArray[Any] | None, plan: ColumnPlan
) -> str | None:
    """The output role a feature column seems to have, by its name or its values."""
    lower = name.lower()
    for role in ("prediction", "label", "timestamp"):
        if role not in plan.roles and _NAMES[role].search(lower):
            return role
    numeric = col.dtype != object
    if "score" not in plan.roles and not plan.class_columns and numeric:
        finite = col[np.isfinite(col)]
        in_unit = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
        fractional = in_unit and bool(np.any(finite != np.round(finite)))
        if fractional and (_NAMES["score"].search(lower) or _orders(col, prediction)):
            return "score"
    if "label" not in plan.roles and prediction is not None and _agrees(col, prediction):
        return "label"
    if "timestamp" not in plan.roles and not numeric:
        values = [v for v in col[:100].tolist() if v is not None]
        if values and all(_ISO_DATE.match(str(v)) for v in values):
            return "timestamp"
    return None


def _distinct(col: NDArray[Any]) -> int:
    if col.dtype != object:
        return int(np.unique(col[np.isfinite(col)]).size)
    return len({v for v in col.tolist() if v is not None})


def _id_like(name: str, col: NDArray[Any]) -> bool:
    """Distinct in every row, and named like an id or made of whole numbers or strings (a
    continuous measurement is distinct in every row too)."""
    if _ID_NAME.search(name) or col.dtype == object:
        return True
    finite = col[np.isfinite(col)]
    return bool(np.all(finite == np.round(finite)))


def _orders(score: NDArray[Any], prediction: NDArray[Any] | None) -> bool:
    """Whether one threshold on ``score`` gives the (binary) prediction in 99% of rows."""
    if prediction is None:
        return False
    pred = as_categories(prediction)
    known = np.isfinite(score) & np.array([v is not None for v in pred.tolist()])
    classes = sorted({v for v in pred[known].tolist()})
    if len(classes) != 2 or known.sum() < MIN_ROWS_FOR_ID:
        return False
    s = score[known].astype(np.float64)
    positive = pred[known] == classes[1]
    order = np.argsort(s, kind="stable")
    pos_sorted = positive[order].astype(np.int64)
    # rows at or above a cut predicted classes[1], below it classes[0]: best over cuts, both ways
    above = np.concatenate(([0], np.cumsum(pos_sorted[::-1])))[::-1]  # positives from i on
    below = np.concatenate(([0], np.cumsum(1 - pos_sorted)))  # negatives before i
    agree = above + below  # the other way round, len(s) - agree agree
    return bool(max(agree.max(), len(s) - agree.min()) >= 0.99 * len(s))


def _agrees(col: NDArray[Any], prediction: NDArray[Any]) -> bool:
    """Whether ``col`` takes the prediction's few values and matches it far above chance."""
    pred = as_categories(prediction)
    values = as_categories(col)
    known = np.not_equal(pred, None) & np.not_equal(values, None)
    if known.sum() < MIN_ROWS_FOR_ID:
        return False
    p, v = pred[known], values[known]
    classes = set(p.tolist())
    if not 2 <= len(classes) <= 20 or not set(v.tolist()) <= classes:
        return False
    match = float(np.mean(p == v))
    shares = [float(np.mean(p == c)) * float(np.mean(v == c)) for c in classes]
    return match >= 0.6 and match > sum(shares) + 0.1
