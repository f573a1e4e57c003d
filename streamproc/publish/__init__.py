"""The commit orders: what is persisted, published and acknowledged, in which order."""
