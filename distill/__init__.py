"""Distillation: train a pruned or smaller student graph to reproduce its float teacher's outputs.

``gencompress.distill`` is both this subpackage and the API verb: importing a submodule binds the
package to the name ``distill`` on ``gencompress``, so the package itself is made callable
(``gencompress.distill(teacher, student, out, ...)`` calls ``api.distill``).
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from gencompress.distill.api import distill

        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
