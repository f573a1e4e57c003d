"""The project's exceptions, rooted in one error so callers can catch them all."""

from __future__ import annotations


class StreamprocError(Exception):
    """Root of every error streamproc raises on purpose."""


class ConfigError(StreamprocError):
    """A configuration value is missing or wrong; the message names the key and the fix."""


class StackError(StreamprocError):
    """The local Kafka/Redis stack could not be brought up or down."""


class TopicError(StreamprocError):
    """Topics could not be created or do not match `topology/topics.yaml`."""


class StateEncodingError(StreamprocError):
    """Bytes read back from Redis or Kafka are not a state blob this version understands."""
