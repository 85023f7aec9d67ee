"""The compiled extensions, beside pyproject.toml (which holds everything else).

``wsgate.proxy._frames`` (src/wsgate/proxy/_frames.c) is optional, as python-websockets'
``speedups`` is: a machine without a C compiler still installs wsgate, and
:mod:`wsgate.proxy.frames` then runs its pure-Python scanner (``WSGATE_PURE=1`` forces that
where the extension was built).  ``setup.py`` rather than pyproject's ``ext-modules`` table,
which setuptools still calls experimental.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wsgate.proxy._frames",
            sources=["src/wsgate/proxy/_frames.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "wsgate.http._heads",
            sources=["src/wsgate/http/_heads.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "wsgate.proxy._relay",
            sources=["src/wsgate/proxy/_relay.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
