"""gencompress: shrink trained generative models as ONNX graphs and check them in onnxruntime.

The Python API has the CLI's verbs; each is imported on first use so that
``import gencompress`` stays light (no torch until a verb needs it).
"""

from gencompress.errors import GencompressError

__version__ = "0.1.0"

_VERBS = {
    "export": "gencompress.exporter.export",
    "train": "gencompress.models.train",
    "prune": "gencompress.verbs.prune",
    "quantize": "gencompress.verbs.quantize",
    "sensitivity": "gencompress.verbs.sensitivity",
    "check": "gencompress.verbs.check",
    "bench": "gencompress.verbs.check",
    "compress": "gencompress.verbs.compress",
    "distill": "gencompress.verbs.distill",
    "ship": "gencompress.edge.bundle",
    "sweep": "gencompress.sweeps.run",
}

__all__ = ["GencompressError", "__version__", *_VERBS]


def __getattr__(name):
    if name in _VERBS:
        import importlib

        from gencompress.arguments import checked

        verb = checked(getattr(importlib.import_module(_VERBS[name]), name))  # user errors, not TypeErrors
        globals()[name] = verb
        return verb
    raise AttributeError(f"module 'gencompress' has no attribute {name!r}")
