"""streamproc: Kafka-native streaming drift detection for ML models in production."""

__version__ = "0.1.0"
