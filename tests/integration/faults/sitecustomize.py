"""A fault for worker subprocesses of the tests (on their ``PYTHONPATH``): a consumer that owns a
partition and does not fetch it, as a rebalance that races Faust's fetcher can leave one.

With ``STREAMPROC_TEST_UNFETCHED=<topic>:<partition>`` set, the consumer leaves that partition
out of what it asks the broker for, for as long as the group stays at the generation in which it
first got the partition; a rebalance (a later generation) ends the fault, unless
``STREAMPROC_TEST_UNFETCHED_FOREVER=1``. Each step is printed to stderr so that the test can tell
that the fault fired.
"""

from __future__ import annotations

import os
import sys

_SPEC = os.environ.get("STREAMPROC_TEST_UNFETCHED")
_FOREVER = os.environ.get("STREAMPROC_TEST_UNFETCHED_FOREVER") == "1"

if _SPEC:
    from faust.transport.consumer import ThreadDelegateConsumer

    _topic, _, _partition = _SPEC.rpartition(":")
    _original = ThreadDelegateConsumer._getmany
    _fault: dict[str, int | None] = {"generation": None, "ended": 0}

    async def _getmany(self, active_partitions, timeout):  # type: ignore[no-untyped-def]
        generation = self.app.consumer_generation_id
        victims = {
            tp
            for tp in active_partitions or ()
            if tp.topic == _topic and tp.partition == int(_partition)
        }
        if victims and not _fault["ended"]:
            if _fault["generation"] is None:
                _fault["generation"] = generation
                print(f"fault: {_SPEC} not fetched in generation {generation}", file=sys.stderr)
            if generation == _fault["generation"] or _FOREVER:
                active_partitions = set(active_partitions) - victims
            else:
                _fault["ended"] = 1
                print(f"fault: {_SPEC} fetched again in generation {generation}", file=sys.stderr)
        return await _original(self, active_partitions, timeout)

    ThreadDelegateConsumer._getmany = _getmany  # type: ignore[method-assign]
