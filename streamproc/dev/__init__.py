"""The local stack, the demo and the synthetic workload."""
