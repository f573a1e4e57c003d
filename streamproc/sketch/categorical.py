"""The categorical window sketch: counts per category, capped by a merge-exact bottom-k rule."""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from streamproc.errors import StateEncodingError
from streamproc.sketch.codec import pack_state, unpack_state

__all__ = ["OTHER", "CategoricalSketch"]

OTHER: Final = "__other__"
"""The category that counts values arriving after a :class:`CategoricalSketch` is full."""


class _CategoricalState(msgspec.Struct, frozen=True):
    max_categories: int
    counts: dict[str, int]
    other: int
    nulls: int


def _category_key(value: str) -> tuple[int, str]:
    # Stable across processes and versions (str hash() is salted); the string breaks ties.
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little"), value


class _Kept:
    """Heap entry ordered by *descending* key, so ``heap[0]`` is the kept category to evict."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[int, str]) -> None:
        self.key = key

    def __lt__(self, other: _Kept) -> bool:
        return self.key > other.key


class CategoricalSketch:
    """Counts per category for up to ``max_categories`` distinct categories, plus nulls.

    Exact while a feature has at most ``max_categories`` distinct values (the usual case).
    Beyond that, the categories that keep their own count are the ``max_categories`` with the
    smallest stable 64-bit hash (BLAKE2b) among all categories seen -- a "bottom-k" rule -- and
    every value of the others is counted under :data:`OTHER` (``"__other__"``), as is a literal
    ``"__other__"`` value.

    The rule depends only on the *set* of categories seen, never on arrival order, which is what
    makes merging exact: a category keeps its count in ``a + b`` if and only if it would in one
    sketch fed both streams, and its count is then complete on both sides. A first-come cap
    cannot do this (a category lumped into ``"__other__"`` by one partial sketch loses its
    identity). The price: over the cap, which categories stay named is a pseudo-random sample
    of them, not the most frequent ones.

    Parameters
    ----------
    max_categories
        Distinct categories counted individually.

    Notes
    -----
    Values must be ``str``: the caller stringifies booleans and numbers reaching a categorical
    feature, so ``True`` and ``"True"`` cannot end up as two categories by accident.

    Per-event cost is one dict lookup; only a *new* category arriving at a full sketch costs a
    hash and a heap operation (O(log max_categories)).

    Examples
    --------
    >>> s = CategoricalSketch()
    >>> s.update_many(["a", "b", "a", None])
    >>> s.counts, s.nulls, s.count, s.total
    ({'a': 2, 'b': 1}, 1, 3, 4)
    >>> tiny = CategoricalSketch(max_categories=2)
    >>> tiny.update_many(["x", "y", "z", "x"])
    >>> sorted(tiny.counts.items())  # the two smallest hashes are "x" and "z"
    [('__other__', 1), ('x', 2), ('z', 1)]
    """

    __slots__ = ("_counts", "_heap", "_nulls", "_other", "max_categories")

    MAGIC: Final = b"SPC1"

    def __init__(self, max_categories: int = 1000) -> None:
        if max_categories < 1:
            raise ValueError(f"max_categories must be >= 1, got {max_categories}")
        self.max_categories = max_categories
        self._counts: dict[str, int] = {}
        self._other = 0
        self._nulls = 0
        # Built the first time a new category meets a full sketch, then kept in step.
        self._heap: list[_Kept] | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Counts per kept category, plus ``"__other__"`` when it is non-zero (a copy)."""
        out = dict(self._counts)
        if self._other:
            out[OTHER] = self._other
        return out

    @property
    def other(self) -> int:
        """Values counted under ``"__other__"``."""
        return self._other

    @property
    def nulls(self) -> int:
        """Number of nulls."""
        return self._nulls

    @property
    def count(self) -> int:
        """Number of non-null values (``"__other__"`` included)."""
        return sum(self._counts.values()) + self._other

    @property
    def total(self) -> int:
        """``count + nulls``."""
        return self.count + self._nulls

    def probabilities(self) -> dict[str, float]:
        """Share of non-null values per category (``"__other__"`` included when non-zero).

        Raises
        ------
        ValueError
            The sketch holds no value.
        """
        n = self.count
        if n == 0:
            raise ValueError("an empty sketch has no distribution")
        return {k: v / n for k, v in self.counts.items()}

    def update(self, value: str | None) -> None:
        """Add one value; ``None`` counts as a null. O(1) for a known category."""
        if value is None:
            self._nulls += 1
            return
        c = self._counts.get(value)
        if c is not None:
            self._counts[value] = c + 1
            return
        if not isinstance(value, str):
            raise TypeError(f"categorical values must be str, got {type(value).__name__}")
        self._admit(value, 1)

    def update_many(self, values: Iterable[str | None], nulls: int = 0) -> None:
        """Add a batch of values (counted in C by :class:`collections.Counter`).

        Parameters
        ----------
        values
            Category values; ``None`` counts as a null.
        nulls
            Additional nulls the caller already separated out.
        """
        if nulls < 0:
            raise ValueError(f"nulls must be >= 0, got {nulls}")
        batch = Counter(values)
        self._nulls += nulls + batch.pop(None, 0)
        bad = [k for k in batch if not isinstance(k, str)]
        if bad:
            raise TypeError(f"categorical values must be str, got {type(bad[0]).__name__}")
        self._absorb(batch)

    def update_counts(self, counts: Mapping[str, int], nulls: int = 0) -> None:
        """Add values already counted: the same as ``update_many`` of a batch holding each
        category ``counts[c]`` times, categories first appearing in ``counts``' order.

        Examples
        --------
        >>> s = CategoricalSketch()
        >>> s.update_counts({"b": 2, "a": 1}, nulls=1)
        >>> s.counts, s.nulls
        ({'b': 2, 'a': 1}, 1)
        """
        if nulls < 0 or any(n < 1 for n in counts.values()):
            raise ValueError("counts must be >= 1 and nulls >= 0")
        bad = [k for k in counts if not isinstance(k, str)]
        if bad:
            raise TypeError(f"categorical values must be str, got {type(bad[0]).__name__}")
        self._nulls += nulls
        self._absorb(counts)

    def _absorb(self, counts: Mapping[str, int]) -> None:
        mine = self._counts
        for k, n in counts.items():
            c = mine.get(k)
            if c is not None:
                mine[k] = c + n
            else:
                self._admit(k, n)

    def _admit(self, value: str, n: int) -> None:
        """Count ``n`` values of a category not currently kept."""
        if value == OTHER:
            self._other += n
            return
        if len(self._counts) < self.max_categories:
            self._counts[value] = n
            if self._heap is not None:
                heapq.heappush(self._heap, _Kept(_category_key(value)))
            return
        if self._heap is None:
            self._heap = [_Kept(_category_key(k)) for k in self._counts]
            heapq.heapify(self._heap)
        key = _category_key(value)
        if key < self._heap[0].key:
            evicted = heapq.heapreplace(self._heap, _Kept(key))
            self._other += self._counts.pop(evicted.key[1])
            self._counts[value] = n
        else:
            self._other += n

    def zero(self) -> CategoricalSketch:
        """An empty sketch with the same cap (the identity of ``+``)."""
        return CategoricalSketch(self.max_categories)

    def copy(self) -> CategoricalSketch:
        """An independent copy."""
        out = self.zero()
        out._counts = dict(self._counts)
        out._other, out._nulls = self._other, self._nulls
        return out

    def merge(self, other: CategoricalSketch) -> CategoricalSketch:
        """A new sketch equal to one fed both streams.

        Raises
        ------
        ValueError
            The sketches have different caps.
        """
        out = self.copy()
        out += other
        return out

    def __add__(self, other: CategoricalSketch) -> CategoricalSketch:
        return self.merge(other)

    def __iadd__(self, other: CategoricalSketch) -> CategoricalSketch:
        """Merge ``other`` into this sketch in place (``a += b``); ``other`` is unchanged."""
        if not isinstance(other, CategoricalSketch):
            raise TypeError(f"cannot merge CategoricalSketch with {type(other).__name__}")
        if other.max_categories != self.max_categories:
            raise ValueError("cannot merge CategoricalSketches with different max_categories")
        self._absorb(other._counts)
        self._other += other._other
        self._nulls += other._nulls
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CategoricalSketch):
            return NotImplemented
        return (
            self.max_categories == other.max_categories
            and self._counts == other._counts
            and self._other == other._other
            and self._nulls == other._nulls
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"CategoricalSketch(categories={len(self._counts)}, count={self.count}, "
            f"other={self._other}, nulls={self._nulls})"
        )

    def to_bytes(self) -> bytes:
        """The versioned stored form (magic ``SPC1``); categories are written sorted."""
        return pack_state(
            self.MAGIC,
            _CategoricalState(
                self.max_categories, dict(sorted(self._counts.items())), self._other, self._nulls
            ),
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> CategoricalSketch:
        """Rebuild a sketch from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Wrong magic or version, or an inconsistent payload.
        """
        st = unpack_state(blob, cls.MAGIC, _CategoricalState, "CategoricalSketch")
        if (
            st.max_categories < 1
            or len(st.counts) > st.max_categories
            or OTHER in st.counts
            or min(st.counts.values(), default=1) < 1
            or st.other < 0
            or st.nulls < 0
        ):
            raise StateEncodingError("corrupt CategoricalSketch blob: inconsistent counts")
        out = cls(st.max_categories)
        out._counts = dict(st.counts)
        out._other, out._nulls = st.other, st.nulls
        return out
