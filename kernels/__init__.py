"""Triton kernels of nano-fleming (logprob.py), under the import name of Hugging Face's Hub-kernels package, which
transformers >= 5.25 requires and imports when a model class loads. When that package is installed this one is it as
well (its directory joins our __path__, its __init__ runs here): transformers finds what it imports, logprob is ours.
"""
import importlib.metadata
import os

try:  # the installed distribution named "kernels", the one transformers' is_kernels_available() checks
    _hub = str(importlib.metadata.distribution("kernels").locate_file("kernels"))
except importlib.metadata.PackageNotFoundError:
    _hub = None
if _hub is not None and os.path.isfile(os.path.join(_hub, "__init__.py")):
    __path__.append(_hub)  # its submodules (kernels._internals, ...) resolve through our __path__
    with open(os.path.join(_hub, "__init__.py")) as _f:
        exec(compile(_f.read(), _f.name, "exec"))  # in our globals: one module object, both APIs
