"""DDM (Drift Detection Method) on a 0/1 error stream, over River's ``binary.DDM``."""

from __future__ import annotations

from typing import Final, Self

import msgspec
from river import drift

from streamproc.judge.detectors.base import MAGIC, checkpoint_of, restore_as
from streamproc.sketch import pack_state

__all__ = ["DDMDetector"]


class _DDMParams(msgspec.Struct, frozen=True):
    warm_start: int
    warning_threshold: float
    drift_threshold: float


class _DDMBlob(msgspec.Struct, frozen=True, tag="ddm", tag_field="kind"):
    params: _DDMParams
    drift_detected: bool
    warning_detected: bool
    n_detections: int
    p_n: float
    p_mean: float
    p_min: float | None
    s_min: float | None
    ps_min: float


@checkpoint_of(_DDMBlob)
class DDMDetector:
    """Drift Detection Method on a 0/1 error stream, wrapping ``river.drift.binary.DDM``.

    Feed ``1`` for a wrong prediction and ``0`` for a right one (the joined prediction/label
    stream). DDM tracks the error rate ``p`` and its standard deviation ``s`` and signals when
    ``p + s`` exceeds its historical minimum by ``drift_threshold`` minimum standard deviations
    (``warning_threshold`` for a warning). It only watches for the error rate *rising*.

    Chosen over EDDM because DDM's test is on the error rate itself, which is what a label-delayed
    monitor sees; EDDM watches distances between errors and suits slow gradual drift on
    near-perfect models.

    Parameters
    ----------
    warm_start
        Updates before a change can be signalled.
    warning_threshold
        Standard deviations above the minimum for a warning.
    drift_threshold
        Standard deviations above the minimum for a detection.

    References
    ----------
    Gama, J., Medas, P., Castillo, G. and Rodrigues, P. (2004). Learning with drift detection.
    SBIA 2004, 286-295.
    """

    KIND: Final = "ddm"

    def __init__(
        self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0
    ) -> None:
        self.warm_start = warm_start
        self.warning_threshold = warning_threshold
        self.drift_threshold = drift_threshold
        self._river = drift.binary.DDM(
            warm_start=warm_start,
            warning_threshold=warning_threshold,
            drift_threshold=drift_threshold,
        )
        self._n_detections = 0

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a change."""
        return self._river.drift_detected

    @property
    def warning_detected(self) -> bool:
        """Whether the last update put the detector in its warning zone."""
        return self._river.warning_detected

    @property
    def n_detections(self) -> int:
        """Changes detected since creation."""
        return self._n_detections

    @property
    def estimation(self) -> float:
        """Error rate since the last reset."""
        return self._river._p.get()

    def update(self, x: float) -> None:
        """Feed one outcome: 1 (or True) for an error, 0 (or False) for a correct prediction."""
        self._river.update(x)
        if self._river.drift_detected:
            self._n_detections += 1

    def to_bytes(self) -> bytes:
        """The versioned checkpoint: ``b"SPD1"`` + kind + hyperparameters + state."""
        r = self._river
        return pack_state(
            MAGIC,
            _DDMBlob(
                params=_DDMParams(self.warm_start, self.warning_threshold, self.drift_threshold),
                drift_detected=r._drift_detected,
                warning_detected=r._warning_detected,
                n_detections=self._n_detections,
                p_n=r._p.n,
                p_mean=r._p._mean,
                p_min=r._p_min,
                s_min=r._s_min,
                ps_min=r._ps_min,
            ),
        )

    @classmethod
    def _restore(cls, blob: _DDMBlob) -> DDMDetector:
        p = blob.params
        det = cls(p.warm_start, p.warning_threshold, p.drift_threshold)
        r = det._river
        r._drift_detected = blob.drift_detected
        r._warning_detected = blob.warning_detected
        r._p.n = blob.p_n
        r._p._mean = blob.p_mean
        r._p_min = blob.p_min
        r._s_min = blob.s_min
        r._ps_min = blob.ps_min
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
            f"DDMDetector(warm_start={self.warm_start!r}, "
            f"warning_threshold={self.warning_threshold!r}, "
            f"drift_threshold={self.drift_threshold!r})"
        )
