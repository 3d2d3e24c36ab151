"""Builds the optional compiled relay core (pgml_server/proxy/_relay.c) with the machine's C compiler.

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no
compiler, not Linux: it uses epoll and eventfd) the install still succeeds and sessions are
relayed by the pure-Python path (pgml_server/proxy/relay.py says which is in use).
"""
import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(Extension("pgml_server.proxy._relay", ["pgml_server/proxy/_relay.c"],
                                 extra_compile_args=["-O2", "-std=gnu11", "-Wall"], optional=True))

setup(ext_modules=ext_modules)
