"""What model servers and label pipelines import to produce events."""
