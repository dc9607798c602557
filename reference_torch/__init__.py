"""PyTorch twins of the original RVC components (checkpoint-faithful, strict loading, float64-capable)."""
