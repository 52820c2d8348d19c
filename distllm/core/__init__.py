"""Control plane (pure Python): block manager, schedulers and the scheduler-output contracts."""
