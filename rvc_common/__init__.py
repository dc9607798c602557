"""What the MLX port and its PyTorch twin share, free of side effects: the original RVC's hyper-parameters and
formats (`config`), input validation (`audio`), the seeded random draws fed to both (`inputs`) and the taps the
models carry (`instrument`). Imports only the standard library and numpy at import (scipy when CREPE's dither
is drawn, MLX when its op profiler runs)."""
