"""rvc-mlx: RVC voice-conversion inference on MLX with layer-by-layer parity against PyTorch twins."""

__version__ = "0.1.0"
