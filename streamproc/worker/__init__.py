"""The Faust worker: agents, timers and ``/metrics``; wiring only."""
