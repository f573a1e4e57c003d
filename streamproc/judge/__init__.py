"""Per model: merge partials into windows, compare with the reference, detect, alert."""
