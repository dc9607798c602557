"""PyTorch twin of RVC's synthesizer (rvc/lib/algorithm): TextEncoder, coupling flow, NSF-HiFiGAN / HiFiGAN."""
