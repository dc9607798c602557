"""RVC synthesizer on MLX: TextEncoder, coupling flow, NSF-HiFiGAN / HiFiGAN."""
