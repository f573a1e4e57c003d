"""Kafka plumbing: the output producer, retries, topics and the one range reader."""
