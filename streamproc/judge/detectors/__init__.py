"""Streaming change detectors over River, with checkpoints that never touch pickle.

Every detector follows River's contract (:class:`Detector`): ``update(x)`` returns nothing,
``drift_detected`` is read-only and holds for exactly one update -- the next ``update`` resets
the detector, as River does. Hyperparameters are public attributes stored as passed; state is
private. Each detector also counts its detections and exposes the quantity it tracks
(``estimation``).

Checkpoints
-----------
``to_bytes()`` writes ``b"SPD1"`` followed by the msgpack (msgspec) encoding of a tagged Struct:
the detector kind (``"adwin"``, ``"page_hinkley"``, ``"ddm"``), its hyperparameters and its full
internal state as named numbers and lists. :func:`detector_from_bytes` rebuilds any of them;
``XDetector.from_bytes`` also checks the kind.

ADWIN's state lives in River's Rust helper; :mod:`streamproc.judge.detectors.adwin` explains how
its checkpoint reads and writes that state without pickle.

Modules
-------
``base`` (the :class:`Detector` contract and the checkpoint envelope), then one algorithm per
module: ``adwin``, ``page_hinkley``, ``ddm``. Import the names from
``streamproc.judge.detectors``.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> stream = np.concatenate([rng.normal(0.0, 1.0, 2000), rng.normal(1.0, 1.0, 2000)])
>>> det = ADWINDetector()
>>> detected = []
>>> for i, x in enumerate(stream.tolist()):
...     det.update(x)
...     if det.drift_detected:
...         detected.append(i)
>>> detected  # the mean moves at index 2000
[2047]
>>> restored = detector_from_bytes(det.to_bytes())
>>> restored.estimation == det.estimation, restored.n_detections
(True, 1)
"""

from streamproc.judge.detectors.adwin import ADWINDetector
from streamproc.judge.detectors.base import MAGIC, Detector, detector_from_bytes
from streamproc.judge.detectors.ddm import DDMDetector
from streamproc.judge.detectors.page_hinkley import PageHinkleyDetector

__all__ = [
    "MAGIC",
    "ADWINDetector",
    "DDMDetector",
    "Detector",
    "PageHinkleyDetector",
    "detector_from_bytes",
]
