"""Ship a compressed model to the edge: a bundle that runs without torch or gencompress.

``ship(model, out_dir, targets=...)`` writes OUT_DIR/model.onnx + manifest.json and, per target,
``python`` (sample.py: onnxruntime + numpy only), ``ort`` (model.ort + required_operators.config
from onnxruntime's own converter) and ``web`` (web/: an onnxruntime-web page, runtime vendored).
"""

from gencompress.ship.bundle import TARGETS, ship

__all__ = ["TARGETS", "ship"]


# `gencompress.ship` is both this subpackage and the Python API verb `gencompress.ship(model, out_dir)`:
# once the subpackage is imported it shadows the verb, so calling the module calls the verb.
def _make_callable() -> None:
    import sys
    import types

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return ship(*args, **kwargs)

    sys.modules[__name__].__class__ = _CallableModule


_make_callable()
