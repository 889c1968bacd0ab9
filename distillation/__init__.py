"""Distillation's internals: a torch mirror of an ONNX graph (``mirror``, ``resample``) and the
training loop (``train``). The verb is ``verbs/distill.py`` (``gencompress.distill``); the recipe
step ``distill`` is ``verbs/distill_step.py``."""
