"""portal's optional C extension; everything else about the build is in pyproject.toml.

portal._udpbatch (recvmmsg/sendmmsg for the DNS stub, portal/edges/udp_batch.py) is built when
a C compiler and Python's headers are there. Without them the build goes on (optional=True) and
portal uses the same functions in pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("portal._udpbatch", ["portal/_udpbatch.c"], optional=True)],
)
