"""Build of the one native piece, the DataRow masking core (server/gateway/_rowmask.c).

Everything else is in pyproject.toml.  The extension is optional: where it
cannot be compiled the install still succeeds and masking runs the pure-Python
path (``server.gateway.masking.NATIVE`` is False then).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "server.gateway._rowmask",
            sources=["server/gateway/_rowmask.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
