"""Builds rvc_mlx._kernels (csrc/: conv, depthwise conv, GRU) on Linux; everything else is in pyproject.toml.

-march=native: the kernel is built by `pip install -e .` on the machine that runs it, and uses its widest
vectors (AVX-512 here). macOS runs MLX's native convs on Metal / Accelerate and builds no extension."""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(Extension(
        "rvc_mlx._kernels",
        sources=["csrc/module.cpp", "csrc/conv2d.cpp", "csrc/depthwise.cpp", "csrc/gru.cpp", "csrc/pool.cpp"],
        depends=["csrc/kernels.h"],
        language="c++",
        extra_compile_args=["-O3", "-march=native", "-std=c++17", "-pthread"],
        extra_link_args=["-pthread"],
    ))

setup(ext_modules=ext_modules)
