"""Every Redis key the live path writes, in one place (``P`` is ``redis.key_prefix``).

=================================  =====================================================
``P:agg:<source>``                  hash: a source's aggregation checkpoint (``head`` and
                                    one field per open tick)
``P:firstrecord``                   the record time of the first record of any source
``P:judge:<model>``                 a model judge's checkpoint (``SPM4``) without its pending
                                    cells
``P:judgecells:<model>``            hash: the judge's pending cells (one source's part of a
                                    tick or window not closed yet), one field each
``P:judgepart:<k>``                 partition ``k`` of the partials topic: its sources'
                                    progress, applied offset, models, quarantined models
``P:outbox:<k>``                    records a commit of partition ``k`` still owes Kafka
``P:parked:<model>``                list: messages of a quarantined model, kept for a retry
``P:alert:<id>``                    an alert id already published (30 days)
``P:timeline:<model>``              the model's reference timeline (which reference judges which
                                    window), published by its judge
``P:timeline:changes``              counter, moved by every timeline published
``P:ref:<fp>``                      a reference by fingerprint (``SPS1``, 30 days)
``P:baselines:changes``             counter, moved by every baseline put or delete (see
                                    :mod:`streamproc.baseline.store`)
``P:worker:<id>``                   hash: a worker's stages' progress (``status``), 2 min
``P:owner:<state key>``             the owner epoch of ``judgepart:<k>`` or ``agg:<source>``:
                                    moved by every load, checked by every write (fencing)
=================================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def source(self, source: str) -> str:
        return f"{self.prefix}:agg:{source}"

    @property
    def first_record(self) -> str:
        """The record time of the first record any source had (idleness of empty sources)."""
        return f"{self.prefix}:firstrecord"

    def owner(self, state: str) -> str:
        """The owner epoch of one unit of state: ``judgepart:<k>`` or ``agg:<source>``.

        >>> Keys("sp").owner("judgepart:3")
        'sp:owner:judgepart:3'
        """
        return f"{self.prefix}:owner:{state}"

    def judge(self, model: str) -> str:
        return f"{self.prefix}:judge:{model}"

    def judge_cells(self, model: str) -> str:
        """The pending cells of ``model``'s judge, one hash field each (``checkpoint.split``)."""
        return f"{self.prefix}:judgecells:{model}"

    def partition(self, k: int) -> str:
        return f"{self.prefix}:judgepart:{k}"

    def outbox(self, k: int) -> str:
        return f"{self.prefix}:outbox:{k}"

    def parked(self, model: str) -> str:
        return f"{self.prefix}:parked:{model}"

    def alert(self, alert_id: str) -> str:
        return f"{self.prefix}:alert:{alert_id}"

    def timeline(self, model: str) -> str:
        return f"{self.prefix}:timeline:{model}"

    @property
    def timeline_changes(self) -> str:
        return f"{self.prefix}:timeline:changes"

    @property
    def baseline_changes(self) -> str:
        return f"{self.prefix}:baselines:changes"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:worker:*"
