"""Data plane, one worker per device: KV cache tensors, model runner, worker."""
