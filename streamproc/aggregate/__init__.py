"""Per source partition: fold accepted events into mergeable window partials
with per-tick summaries."""
