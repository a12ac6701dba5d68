"""Builds the optional bit-packed kernel extension (models.kernels._bitpacked).

Everything else is configured in pyproject.toml. The extension needs only a C compiler (no torch or
numpy headers). If it cannot be compiled the install still succeeds: the engine then runs the float
path and ``models.kernels.unavailable_reason()`` says why.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

BASE_FLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-Wall"]


class OptionalBuildExt(build_ext):
    """Try with OpenMP, then without; never fail the install."""

    def build_extension(self, ext: Extension) -> None:
        attempts = [(["-fopenmp"], ["-fopenmp"]), ([], [])]
        errors = []
        for cflags, lflags in attempts:
            ext.extra_compile_args = BASE_FLAGS + cflags
            ext.extra_link_args = lflags
            try:
                super().build_extension(ext)
                if cflags:
                    return
                print(f"warning: {ext.name} built without OpenMP (single-threaded): {errors[-1]}",
                      file=sys.stderr)
                return
            except (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError) as e:
                errors.append(f"{type(e).__name__}: {e}")
        print(f"warning: optional extension {ext.name} not built; the float path will run. "
              f"Errors: {'; '.join(errors)}", file=sys.stderr)


setup(
    ext_modules=[Extension("models.kernels._bitpacked", sources=["csrc/bitpacked.c"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
