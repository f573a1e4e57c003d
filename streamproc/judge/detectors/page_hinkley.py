"""The Page-Hinkley test for a change in the mean, over River's ``PageHinkley``."""

from __future__ import annotations

from typing import Final, Literal, Self

import msgspec
from river import drift

from streamproc.judge.detectors.base import MAGIC, checkpoint_of, restore_as
from streamproc.sketch import pack_state

__all__ = ["PageHinkleyDetector"]


class _PageHinkleyParams(msgspec.Struct, frozen=True):
    min_instances: int
    delta: float
    threshold: float
    alpha: float
    mode: Literal["up", "down", "both"]


class _PageHinkleyBlob(msgspec.Struct, frozen=True, tag="page_hinkley", tag_field="kind"):
    params: _PageHinkleyParams
    drift_detected: bool
    n_detections: int
    mean_n: float
    mean: float
    sum_increase: float
    sum_decrease: float
    min_increase: float
    max_decrease: float


@checkpoint_of(_PageHinkleyBlob)
class PageHinkleyDetector:
    """Page-Hinkley test for a change in the mean, wrapping ``river.drift.PageHinkley``.

    Accumulates deviations from the running mean (faded by ``alpha``) and signals when the
    cumulative sum moves more than ``threshold`` away from its extreme.

    Parameters
    ----------
    min_instances
        Updates before a change can be signalled.
    delta
        Magnitude of change tolerated per update.
    threshold
        Detection threshold (lambda), in units of the stream.
    alpha
        Forgetting factor of the cumulative sums.
    mode
        ``"up"``, ``"down"`` or ``"both"``: which direction of change to signal.

    References
    ----------
    Page, E. S. (1954). Continuous inspection schemes. Biometrika 41(1/2), 100-115.
    """

    KIND: Final = "page_hinkley"

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 0.9999,
        mode: Literal["up", "down", "both"] = "both",
    ) -> None:
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._river = drift.PageHinkley(
            min_instances=min_instances, delta=delta, threshold=threshold, alpha=alpha, mode=mode
        )
        self._n_detections = 0

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a change."""
        return self._river.drift_detected

    @property
    def n_detections(self) -> int:
        """Changes detected since creation."""
        return self._n_detections

    @property
    def estimation(self) -> float:
        """Running mean of the values since the last reset."""
        return self._river._x_mean.get()

    def update(self, x: float) -> None:
        """Feed one value. O(1)."""
        self._river.update(x)
        if self._river.drift_detected:
            self._n_detections += 1

    def to_bytes(self) -> bytes:
        """The versioned checkpoint: ``b"SPD1"`` + kind + hyperparameters + state."""
        r = self._river
        return pack_state(
            MAGIC,
            _PageHinkleyBlob(
                params=_PageHinkleyParams(
                    self.min_instances, self.delta, self.threshold, self.alpha, self.mode
                ),
                drift_detected=r._drift_detected,
                n_detections=self._n_detections,
                mean_n=r._x_mean.n,
                mean=r._x_mean._mean,
                sum_increase=r._sum_increase,
                sum_decrease=r._sum_decrease,
                min_increase=r._min_increase,
                max_decrease=float(r._max_decrease),
            ),
        )

    @classmethod
    def _restore(cls, blob: _PageHinkleyBlob) -> PageHinkleyDetector:
        p = blob.params
        det = cls(p.min_instances, p.delta, p.threshold, p.alpha, p.mode)
        r = det._river
        r._drift_detected = blob.drift_detected
        r._x_mean.n = blob.mean_n
        r._x_mean._mean = blob.mean
        r._sum_increase = blob.sum_increase
        r._sum_decrease = blob.sum_decrease
        r._min_increase = blob.min_increase
        r._max_decrease = blob.max_decrease
        det._n_detections = blob.n_detections
        return det

    @classmethod
    def from_bytes(cls, blob: bytes) -> Self:
        """Rebuild a detector from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Not a detector checkpoint, another version, or another kind of detector.
        """
        return restore_as(cls, blob)

    def __repr__(self) -> str:
        return (
            f"PageHinkleyDetector(min_instances={self.min_instances!r}, delta={self.delta!r}, "
            f"threshold={self.threshold!r}, alpha={self.alpha!r}, mode={self.mode!r})"
        )
