"""Per source partition: fold accepted events into mergeable per-tick partials."""
