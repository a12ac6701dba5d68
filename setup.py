"""Builds the optional bit-packed kernel extension (models.kernels._bitpacked).

Everything else is configured in pyproject.toml. The extension needs only a C compiler and the
Python headers (no torch or numpy headers, no OpenMP: it uses pthreads). If it cannot be compiled
the install still succeeds: the engine then runs the float path and
``models.kernels.unavailable_reason()`` says why.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

FLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-pthread", "-Wall"]


class OptionalBuildExt(build_ext):
    """Never fail the install because the extension does not compile."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError) as e:
            print(f"warning: optional extension {ext.name} not built ({type(e).__name__}: {e}); "
                  "the float path will run", file=sys.stderr)


setup(
    ext_modules=[Extension("models.kernels._bitpacked", sources=["csrc/bitpacked.c"],
                           depends=["csrc/color.inc"], optional=True, extra_compile_args=FLAGS,
                           extra_link_args=["-pthread"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
