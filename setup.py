"""Builds the CPU kernels (csrc/) on Linux; everything else is in pyproject.toml.

One build per ISA, each an extension of its own, so that an install copied to another machine still runs:
rvc_mlx._kernels_avx512 (AVX-512 F/DQ/BW/VL + FMA), _kernels_avx2 (AVX2 + FMA) and _kernels_generic (the
compiler's baseline) on x86-64, _kernels_generic elsewhere; rvc_mlx._cpu (baseline) tells rvc_mlx.dispatch which
of them this CPU runs. No -march=native. macOS runs MLX's native convs on Metal / Accelerate and builds none."""

import copy
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["csrc/module.cpp", "csrc/conv2d.cpp", "csrc/depthwise.cpp", "csrc/gru.cpp", "csrc/elementwise.cpp",
           "csrc/attention.cpp", "csrc/gemm.cpp", "csrc/pool.cpp"]
COMMON = ["-O3", "-std=c++17", "-pthread", "-fvisibility=hidden", "-fno-semantic-interposition"]
X86_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
    "avx2": ["-mavx2", "-mfma"],
    "generic": [],
}


def _extensions() -> list[Extension]:
    if not sys.platform.startswith("linux"):
        return []
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
    flags = X86_FLAGS if x86 else {"generic": []}
    exts = [Extension(f"rvc_mlx._kernels_{isa}", sources=SOURCES, depends=["csrc/kernels.h", "csrc/vmath.h"], language="c++",
                      extra_compile_args=COMMON + extra + [f"-DRVC_KERNELS_ISA={isa}"], extra_link_args=["-pthread"])
            for isa, extra in flags.items()]
    exts.append(Extension("rvc_mlx._cpu", sources=["csrc/cpu.cpp"], language="c++", extra_compile_args=["-O2"]))
    return exts


class ParallelBuild(build_ext):
    """The kernel builds compile side by side (one job per core), each into a temp dir of its own: they compile
    the same sources with different flags, and one shared dir would hand every build the last one's objects."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext):
        own = copy.copy(self)  # the parallel builds share `self`: give each its own build_temp
        own.build_temp = os.path.join(self.build_temp, ext.name)
        build_ext.build_extension(own, ext)


setup(ext_modules=_extensions(), cmdclass={"build_ext": ParallelBuild})
