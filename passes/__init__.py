"""Graph passes on onnx_ir models: cleanup, rewrites, pruning, quantization.

One pass per module. Each pass is an ``onnx_ir.passes`` pass class with a frozen
``Options`` dataclass, registered by name in ``registry`` so recipes (data) can name it.
"""
