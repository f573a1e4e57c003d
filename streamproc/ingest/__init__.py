"""The partition-parallel front of the worker: decode, dead-letter, join by prediction id."""
