"""Mergeable window sketches: what a monitor keeps per (feature, segment) while a window is open.

Every sketch here is a *monoid*: an empty sketch (:meth:`zero`) is the identity, ``a + b`` is
associative, and ``a + b`` equals one sketch fed both streams (counts, histograms, min and max
exactly; mean and variance up to floating-point rounding). Partial windows built by several
partitions or workers therefore combine into what a single worker would have built.

Sketches are mutable accumulators (``update`` / ``update_many`` change them in place, the hot
path); ``merge`` and ``+`` return a new sketch and leave both operands untouched.

Stored form
-----------
``to_bytes()`` gives a 4-byte magic -- three letters naming the type and one digit for the format
version -- followed by the msgpack encoding (msgspec) of a plain Struct holding the state. Numpy
arrays are stored as raw little-endian bytes. ``from_bytes`` refuses any other magic or version
with :class:`~streamproc.errors.StateEncodingError`; nothing is ever unpickled.

=====  ======================  ======================================
Magic  Type                    State
=====  ======================  ======================================
SPN1   :class:`NumericSketch`   bin edges, histogram, moments, range
SPC1   :class:`CategoricalSketch`  category counts, overflow, nulls
SPQ1   :class:`QuantileSketch`  log-bucket counts (DDSketch-style)
SPE1   :class:`CalibrationSketch`  per-confidence-bin count and sums
SPX1   :class:`CrossMoments`    count, sum and cross products of fixed-point rows
=====  ======================  ======================================

Modules
-------
``codec`` holds the versioned envelope (:func:`pack_state`, :func:`unpack_state`) and the array
helpers; ``numeric``, ``categorical``, ``quantile``, ``calibration`` and ``moments`` one
sketch each, with its bin edges. Import the names from ``streamproc.sketch``.

Examples
--------
>>> import numpy as np
>>> edges = reference_edges(np.arange(100.0), bins=4)
>>> edges
array([24., 49., 74.])
>>> a = NumericSketch(edges, ref_min=0.0, ref_max=99.0)
>>> a.update_many(np.array([1.0, 30.0, 60.0, np.nan]))
>>> b = NumericSketch(edges, ref_min=0.0, ref_max=99.0)
>>> b.update(120.0)
>>> both = a + b
>>> both.hist.tolist(), both.count, both.nulls, both.above_ref_max
([1, 1, 1, 1], 4, 1, 1)
>>> NumericSketch.from_bytes(both.to_bytes()) == both
True
"""

from streamproc.sketch.calibration import CalibrationSketch, calibration_edges
from streamproc.sketch.categorical import OTHER, CategoricalSketch
from streamproc.sketch.codec import pack_state, unpack_state
from streamproc.sketch.moments import MV_SCALE, MV_Z_CLIP, CrossMoments, standardised
from streamproc.sketch.numeric import NumericSketch, reference_edges
from streamproc.sketch.quantile import QuantileSketch

__all__ = [
    "MV_SCALE",
    "MV_Z_CLIP",
    "OTHER",
    "CalibrationSketch",
    "CategoricalSketch",
    "CrossMoments",
    "NumericSketch",
    "QuantileSketch",
    "calibration_edges",
    "pack_state",
    "reference_edges",
    "standardised",
    "unpack_state",
]
