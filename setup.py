"""Builds ``ecd2g_fast._C``: the C++ CPU sources always, the CUDA sources when they can compile.

Sources are found by glob (``csrc/*.cpp``, ``csrc/cpu/*.cpp``, ``csrc/cuda/*.cu``), so a new op
needs no change here. CUDA is used when torch is a CUDA build and a CUDA toolkit is found, or when
``FORCE_CUDA=1``; ``MAX_JOBS`` and ``TORCH_CUDA_ARCH_LIST`` are honoured by torch's build helper.
"""

import glob
import os
import sys

from setuptools import setup

ext_modules, cmdclass = [], {}
try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # metadata-only builds (sdist) without torch
    torch = None

sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
if torch is not None and sources:
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (
        torch.version.cuda is not None and CUDA_HOME is not None
    )
    cxx_flags = ["-O3"]  # the C++ standard is the one torch.utils.cpp_extension picks for this torch
    if sys.platform.startswith("linux") and "parallel backend: OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is only parallel where the including code is compiled with OpenMP; the
        # GOMP symbols resolve at load time to the libgomp that torch itself loaded
        cxx_flags.append("-fopenmp")
    if with_cuda:
        print("ecd2g_fast: building the C++ CPU and CUDA extension")
        ext_modules.append(
            CUDAExtension(
                "ecd2g_fast._C",
                sources + sorted(glob.glob("csrc/cuda/*.cu")),
                define_macros=[("WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            )
        )
    else:
        print("ecd2g_fast: no CUDA toolkit or CPU-only torch: building the C++ CPU extension only")
        ext_modules.append(CppExtension("ecd2g_fast._C", sources, extra_compile_args={"cxx": cxx_flags}))
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
