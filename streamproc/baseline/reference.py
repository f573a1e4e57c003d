"""A segment's reference as the live path uses it: the stored form, its fingerprint, numpy views.

A :class:`~streamproc.baseline.SegmentReference` is what a baseline (or a monitor's warm-up)
stores per segment. The live path needs two more things of it, and this module gives them
without a second data model:

- a **fingerprint**: the hash of its bytes. Partials built by the aggregation stage carry the
  fingerprint of the reference they were binned with, so the judging stage can tell, for any
  window, which reference its sketches belong to, whatever was created, replaced or deleted in
  between. References are stored in Redis by fingerprint (:func:`ref_key`), so a fingerprint
  always resolves, after a restart or on another worker.
- **prepared arrays** (edges, moments) for the vectorised hot path, computed once per reference.

Examples
--------
>>> from streamproc.baseline import CategoricalReference, NumericReference, SegmentReference
>>> seg = SegmentReference(count=4, features={
...     "x": NumericReference(count=4, nulls=0, edges=[1.0, 2.0], probs=[0.25, 0.5, 0.25],
...                           mean=1.5, std=1.0, min=0.0, max=3.0),
...     "c": CategoricalReference(count=4, nulls=0, probs={"a": 1.0})})
>>> ref = Reference.of(seg, "baseline")
>>> ref.numeric_names, ref.categorical_names, len(ref.fp)
(('x',), ('c',), 16)
>>> back = Reference.from_bytes(ref.to_bytes())
>>> back == ref, back.origin
(True, 'baseline')
>>> ref.narrowed(["c"]).numeric_names
()
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final, Literal

import msgspec
import numpy as np
from numpy.typing import NDArray

from streamproc.baseline import (
    CategoricalReference,
    LossModelReference,
    NumericReference,
    ReconstructionReference,
    SegmentReference,
)
from streamproc.errors import StateEncodingError
from streamproc.sketch import (
    CategoricalSketch,
    NumericSketch,
    calibration_edges,
    pack_state,
    unpack_state,
)

Origin = Literal["baseline", "warmup"]
MAGIC: Final = b"SPS1"
"""Magic and format version of a stored reference (``P:ref:<fp>``): its origin and segment."""

REF_TTL_S: Final = 30 * 24 * 3600
"""How long a reference stays resolvable by fingerprint after it was last put to use."""


def ref_key(prefix: str, fp: str) -> str:
    """The Redis key of a reference by fingerprint.

    >>> ref_key("streamproc", "0123abcd")
    'streamproc:ref:0123abcd'
    """
    return f"{prefix}:ref:{fp}"


def fingerprint(segment: SegmentReference) -> str:
    """The hash of a segment's bytes. The fields added after the first format are left out
    while unset (:meth:`SegmentReference.fingerprint_bytes`), so references stored by older
    versions keep their fingerprints (partials and judge state in flight name them).

    >>> seg = SegmentReference(count=3)
    >>> fingerprint(seg) == hashlib.blake2b(seg.fingerprint_bytes(), digest_size=8).hexdigest()
    True
    """
    return hashlib.blake2b(segment.fingerprint_bytes(), digest_size=8).hexdigest()


class _Stored(msgspec.Struct, frozen=True, array_like=True):
    origin: str
    segment: SegmentReference


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """A :class:`~streamproc.baseline.ReconstructionReference` as the arrays the fold and the
    judge use."""

    ref: ReconstructionReference
    features: tuple[str, ...]
    means: NDArray[np.float64]
    stds: NDArray[np.float64]
    components: NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Reference:
    """One segment's reference with its fingerprint and origin.

    Two references are equal when their fingerprints are: the fingerprint is a hash of the
    stored bytes, so it names the content.
    """

    fp: str
    origin: Origin
    segment: SegmentReference

    @classmethod
    def of(cls, segment: SegmentReference, origin: Origin) -> Reference:
        """The handle of ``segment``; its fingerprint hashes the segment's bytes (not origin)."""
        return cls(fingerprint(segment), origin, segment)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Reference:
        """Read :meth:`to_bytes` output (raises :class:`StateEncodingError` on anything else)."""
        stored = unpack_state(blob, MAGIC, _Stored, "Reference")
        origin: Origin = "warmup" if stored.origin == "warmup" else "baseline"
        return cls.of(stored.segment, origin)

    def to_bytes(self) -> bytes:
        return pack_state(MAGIC, _Stored(self.origin, self.segment))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and other.fp == self.fp

    def __hash__(self) -> int:
        return hash(self.fp)

    def narrowed(self, features: Iterable[str] | None) -> Reference:
        """This reference watching only ``features`` (all when ``None``)."""
        if features is None:
            return self
        keep = set(features)
        rec = self.segment.reconstruction
        if rec is not None and not keep.issuperset(rec.features):
            rec = None  # its PCA spans a feature not watched: no multivariate check
        seg = msgspec.structs.replace(
            self.segment,
            features={k: v for k, v in self.segment.features.items() if k in keep},
            reconstruction=rec,
        )
        return Reference.of(seg, self.origin) if seg != self.segment else self

    # -- prepared views (cached: a reference is immutable) -------------------------------------

    @cached_property
    def numeric(self) -> dict[str, NumericReference]:
        """Numeric features with at least one value (they have bins)."""
        return {
            k: v
            for k, v in sorted(self.segment.features.items())
            if isinstance(v, NumericReference) and v.count and v.mean is not None
        }

    @cached_property
    def categorical(self) -> dict[str, CategoricalReference]:
        return {
            k: v
            for k, v in sorted(self.segment.features.items())
            if isinstance(v, CategoricalReference) and v.probs
        }

    @property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(self.numeric)

    @property
    def categorical_names(self) -> tuple[str, ...]:
        return tuple(self.categorical)

    @cached_property
    def watched(self) -> frozenset[str]:
        """Every feature this reference judges."""
        return frozenset(self.numeric) | frozenset(self.categorical)

    @cached_property
    def edges(self) -> dict[str, NDArray[np.float64]]:
        return {k: np.asarray(v.edges, dtype=np.float64) for k, v in self.numeric.items()}

    @cached_property
    def scales(self) -> dict[str, tuple[float, float]]:
        """Per numeric feature ``(mean, sd)``; sd 0 where the reference has no spread."""
        out = {}
        for k, v in self.numeric.items():
            sd = float(v.std or 0.0)
            out[k] = (float(v.mean or 0.0), sd if math.isfinite(sd) else 0.0)
        return out

    @cached_property
    def probs(self) -> dict[str, NDArray[np.float64]]:
        return {k: np.asarray(v.probs, dtype=np.float64) for k, v in self.numeric.items()}

    @cached_property
    def score_edges(self) -> NDArray[np.float64]:
        """The bins of the window's confidence sketch: the calibration map's, else the score
        reference's, else ten equal bins."""
        seg = self.segment
        if seg.calibration is not None:
            return np.asarray(seg.calibration.edges, dtype=np.float64)
        if seg.score is not None and seg.score.edges:
            return np.asarray(seg.score.edges, dtype=np.float64)
        return calibration_edges(10)

    @property
    def numeric_prediction(self) -> NumericReference | None:
        p = self.segment.prediction
        if isinstance(p, NumericReference) and p.count and p.mean is not None:
            return p
        return None

    @property
    def categorical_prediction(self) -> CategoricalReference | None:
        p = self.segment.prediction
        return p if isinstance(p, CategoricalReference) and p.probs else None

    @cached_property
    def _empty_numeric(self) -> dict[str, NumericSketch]:
        out = {}
        for name, v in self.numeric.items():
            lo = -math.inf if v.min is None else v.min
            out[name] = NumericSketch(self.edges[name], lo, math.inf if v.max is None else v.max)
        return out

    def numeric_sketch(self, name: str) -> NumericSketch:
        """An empty window sketch binned like feature ``name`` of the reference."""
        return self._empty_numeric[name].zero()

    def prediction_sketch(self) -> NumericSketch | CategoricalSketch | None:
        p = self.numeric_prediction
        if p is not None:
            return NumericSketch(
                p.edges, -math.inf if p.min is None else p.min, math.inf if p.max is None else p.max
            )
        if self.categorical_prediction is not None:
            return CategoricalSketch()
        return None

    @cached_property
    def reconstruction(self) -> Reconstruction | None:
        """The multivariate-drift PCA as arrays, when the reference has one."""
        rec = self.segment.reconstruction
        if rec is None or len(rec.features) < 2 or not rec.components:
            return None
        return Reconstruction(
            rec,
            tuple(rec.features),
            np.asarray(rec.means, dtype=np.float64),
            np.asarray(rec.stds, dtype=np.float64),
            np.asarray(rec.components, dtype=np.float64),
        )

    @property
    def losses(self) -> LossModelReference | None:
        """A regression model's loss trees, for its estimated MAE, RMSE and MAPE."""
        return self.segment.losses

    @cached_property
    def losses_key(self) -> str:
        """A hash of the loss trees: the segments of a model share them (rows are run down
        them once per batch)."""
        blob = msgspec.msgpack.encode(self.segment.losses)
        return hashlib.blake2b(blob, digest_size=8).hexdigest()

    @property
    def accuracy(self) -> float | None:
        return self.segment.accuracy

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"`` (see :meth:`SegmentReference.task_of`)."""
        return self.segment.task_of()


def decode_reference(blob: bytes | None) -> Reference | None:
    """A stored reference, or ``None`` when absent or unreadable (never raises on bad bytes)."""
    if not blob:
        return None
    try:
        return Reference.from_bytes(bytes(blob))
    except (StateEncodingError, msgspec.DecodeError, msgspec.ValidationError):
        return None


class ReferenceCache:
    """References by fingerprint: those put here, and those read back from Redis.

    The engines look references up synchronously (:meth:`get`); the stages that feed them make
    sure every fingerprint they will need is here first (:meth:`load`), and store the ones they
    create (:meth:`store`), so any worker, or the same one after a restart, can resolve them.
    """

    def __init__(self) -> None:
        self._by_fp: dict[str, Reference] = {}

    def put(self, ref: Reference) -> Reference:
        return self._by_fp.setdefault(ref.fp, ref)

    def get(self, fp: str | None) -> Reference | None:
        return None if fp is None else self._by_fp.get(fp)

    def all(self) -> list[Reference]:
        return list(self._by_fp.values())

    def __contains__(self, fp: object) -> bool:
        return fp in self._by_fp

    async def load(self, client: Any, prefix: str, fps: Iterable[str]) -> list[str]:
        """Read the missing ones of ``fps`` from Redis; return those still unknown."""
        missing = sorted({fp for fp in fps if fp not in self._by_fp})
        if not missing:
            return []
        blobs = await client.mget([ref_key(prefix, fp) for fp in missing])
        unknown = []
        for fp, blob in zip(missing, blobs, strict=True):
            ref = decode_reference(blob)
            if ref is None or ref.fp != fp:
                unknown.append(fp)
            else:
                self._by_fp[fp] = ref
        return unknown

    @staticmethod
    async def store(client: Any, prefix: str, refs: Iterable[Reference]) -> None:
        """Keep ``refs`` resolvable by fingerprint for :data:`REF_TTL_S` from now."""
        refs = list(refs)
        if not refs:
            return
        async with client.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.set(ref_key(prefix, ref.fp), ref.to_bytes(), ex=REF_TTL_S)
            await pipe.execute()


def references_of(
    segments: dict[str, SegmentReference], origin: Origin, features: Iterable[str] | None
) -> dict[str, Reference]:
    """Each segment's reference, watching only ``features`` (``monitoring.features``)."""
    return {k: Reference.of(s, origin).narrowed(features) for k, s in segments.items()}
