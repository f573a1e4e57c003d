"""A batch of accepted predictions as columns, each built once, on first use.

An event feeds about three monitors (all traffic and one per segment dimension), each split by
tick; every such group indexes into these shared columns, so a value is converted once per batch
however many groups read it.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from streamproc.baseline import category_value
from streamproc.contracts import Scalar


def is_number(v: object) -> bool:
    """A JSON number (booleans are not numbers here).

    >>> is_number(3), is_number(2.5), is_number(True), is_number("3")
    (True, True, False, False)
    """
    return isinstance(v, int | float) and not isinstance(v, bool)


def row_hash(partition: int, offset: int, index: int) -> int:
    """A 64-bit hash of an event's position: the order of sampled rows, the same on any run.

    >>> row_hash(0, 1, -1) == row_hash(0, 1, -1) != row_hash(0, 2, -1)
    True
    """
    digest = hashlib.blake2b(f"{partition}:{offset}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class NumColumn(NamedTuple):
    """One batch's values of a numeric field: float64 with NaN where there is no number."""

    values: np.ndarray
    finite: np.ndarray | None  # finite numbers; None: every value is one
    number: np.ndarray | None  # numbers, finite or not (not bool); None: every value is one
    null: np.ndarray | None  # None values; None: there are none


def num_column(raw: Sequence[Any]) -> NumColumn:
    """Convert a column of JSON values to a :class:`NumColumn`.

    >>> c = num_column([1.0, None, "a", 2])
    >>> c.values.tolist()[0], c.number.tolist(), c.null.tolist()
    (1.0, [True, False, False, True], [False, True, False, False])
    """
    n = len(raw)
    kinds = set(map(type, raw))
    number: np.ndarray | None
    null: np.ndarray | None
    if kinds <= {float, type(None)}:  # the usual case: numpy reads None as NaN
        values = np.array(raw, dtype=np.float64)
        number = null = None
        if None in kinds:
            null = np.fromiter((v is None for v in raw), bool, n)
            number = ~null
    else:
        number = np.fromiter(map(is_number, raw), bool, n)
        null = np.fromiter((v is None for v in raw), bool, n)
        ok = number.tolist()
        values = np.array(
            [float(v) if is_num else math.nan for v, is_num in zip(raw, ok, strict=True)],
            dtype=np.float64,
        )
        number = None if number.all() else number
        null = null if null.any() else None
    finite = np.isfinite(values)
    return NumColumn(values, None if finite.all() else finite, number, null)


def group_counts(mask: np.ndarray, sizes: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many rows of each consecutive group (``sizes``, ending at ``ends``) ``mask`` holds.

    >>> group_counts(np.array([1, 0, 1, 1], bool), np.array([2, 2]), np.array([2, 4])).tolist()
    [1, 2]
    """
    cs = np.concatenate(([0], mask.cumsum()))
    return cs[ends] - cs[ends - sizes]


class Columns:
    """The accepted predictions of one batch of one source, column-wise.

    Parameters
    ----------
    features, predictions, confidences, latencies
        Per event, in offset order.
    partition, offsets, indexes
        The events' source partition, message offsets and positions in their message (``-1``
        for a single-event message): what alerts cite for replay, and what samples hash.
    scores
        Per event, its per-class scores (``None`` where it has none); ``None``: no event has.
    """

    def __init__(
        self,
        features: Sequence[Mapping[str, Any]],
        predictions: Sequence[Scalar],
        confidences: Sequence[float | None],
        latencies: Sequence[float | None],
        partition: int,
        offsets: Sequence[int],
        indexes: Sequence[int],
        scores: Sequence[Mapping[str, float] | None] | None = None,
    ) -> None:
        self.features = features
        self.predictions = predictions
        self.confidences = confidences
        self.latencies = latencies
        self.partition = partition
        self.offsets = offsets
        self.indexes = indexes
        self.scores = scores
        self._numeric: dict[str, NumColumn] = {}
        self._labels: dict[str, Sequence[str | None]] = {}
        self._raws: dict[str, tuple[list[Any], bool]] = {}
        self._cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.features)

    def _column(self, what: Any, build: Any) -> Any:
        col = self._cache.get(what)
        if col is None:
            col = self._cache[what] = build()
        return col

    def raw(self, name: str) -> list[Any]:
        """A feature's values row by row (``None`` where absent)."""
        got = self._raws.get(name)
        if got is None:
            try:  # every row has it: the usual case, and the fastest way to read it
                column = list(map(operator.itemgetter(name), self.features))
                got = self._raws[name] = (column, True)
            except KeyError:
                got = self._raws[name] = ([f.get(name) for f in self.features], False)
        return got[0]

    def numeric(self, name: str) -> NumColumn:
        col = self._numeric.get(name)
        if col is None:
            col = self._numeric[name] = num_column(self.raw(name))
        return col

    def labels(self, name: str) -> Sequence[str | None]:
        """A categorical feature's values as categories (``None`` for null), row by row."""
        labels = self._labels.get(name)
        if labels is None:
            raw = self.raw(name)
            if set(map(type, raw)) <= {str, type(None)}:
                labels = raw  # category_value(s) == s
            else:
                labels = [category_value(v) for v in raw]
            self._labels[name] = labels
        return labels

    def prediction_labels(self) -> Sequence[str | None]:
        def build() -> Sequence[str | None]:
            raw = self.predictions
            if set(map(type, raw)) <= {str}:
                return raw  # type: ignore[return-value]
            return [category_value(v) for v in raw]

        return self._column("pl", build)  # type: ignore[no-any-return]

    def prediction_numbers(self) -> NumColumn:
        return self._column("pn", lambda: num_column(list(self.predictions)))  # type: ignore[no-any-return]

    def _optional(
        self, what: str, raw: Sequence[float | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A float-or-None field: values (NaN for None) and where it is set (None: all rows)."""

        def build() -> tuple[np.ndarray, np.ndarray | None]:
            values = np.array(raw, dtype=np.float64)
            if None not in raw:
                return values, None
            return values, np.fromiter((v is not None for v in raw), bool, len(raw))

        return self._column(what, build)  # type: ignore[no-any-return]

    def confidence(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self._optional("confidence", self.confidences)

    def latency(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self._optional("latency", self.latencies)

    def factorized(
        self, what: str, labels: Sequence[str | None]
    ) -> tuple[np.ndarray, list[str | None]]:
        """Codes of ``labels`` (0 for ``None``) and the names in order of first appearance."""

        def build() -> tuple[np.ndarray, list[str | None]]:
            index: dict[str | None, int] = {None: 0}
            codes = [index.setdefault(v, len(index)) for v in labels]
            return np.array(codes, dtype=np.int64), list(index)

        return self._column(("codes", what), build)  # type: ignore[no-any-return]

    def offsets_array(self) -> np.ndarray:
        return self._column("off", lambda: np.asarray(self.offsets, dtype=np.int64))  # type: ignore[no-any-return]

    def row_hash(self, i: int) -> int:
        hashes: dict[int, int] = self._column("h", dict)
        h = hashes.get(i)
        if h is None:
            h = hashes[i] = row_hash(self.partition, self.offsets[i], self.indexes[i])
        return h

    def complete(self, name: str) -> bool:
        """Whether every row carries feature ``name`` (known once :meth:`raw` read it)."""
        self.raw(name)
        return self._raws[name][1]

    def feature_lengths(self) -> set[int]:
        return self._column("lengths", lambda: set(map(len, self.features)))  # type: ignore[no-any-return]
