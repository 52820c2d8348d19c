"""Model building blocks: TP-aware linear/embedding layers, norms, rotary, activations, paged
attention (context.py: per-batch attention metadata), sampler."""
