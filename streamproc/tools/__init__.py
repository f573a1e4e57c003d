"""Operators' tools: replay, its report, and on-call (``alerts tail``, ``status``)."""
