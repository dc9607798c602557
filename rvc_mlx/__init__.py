"""rvc-mlx: RVC voice-conversion inference on MLX with layer-by-layer parity against PyTorch twins.

Importing the package has no side effects: MLX is set up (OpenBLAS, buffer cache, kernels) by `rvc_mlx.runtime`
at the first import of a module that computes, or by `rvc_mlx.runtime.setup()`.
"""

__version__ = "0.1.0"
