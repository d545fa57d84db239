"""Builds the optional compiled filter kernels (data_tools/_native.c); everything else is in
setup.cfg. Without a C compiler the install still succeeds and data_tools runs its numpy/Python
code instead (data_tools/native.py says which is in use)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("data_tools._native", ["data_tools/_native.c"],
                             extra_compile_args=["-O3"], optional=True)])
