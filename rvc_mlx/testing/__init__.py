"""The parity harness: taps, metrics, golden store, tolerance policy, first-divergence blame, reports."""
