"""Graph passes on onnx_ir models: cleanup, rewrites, pruning, quantization — pure graph code.

A pass is an ``onnx_ir.passes`` pass class with a frozen ``Options`` dataclass, registered by name
in ``registry`` so recipes (data) can name it. No module here opens an onnxruntime session,
imports torch or click, or runs a verb (``tests/test_layering.py``). Importing the package
registers every pass.
"""

from gencompress.passes import (  # noqa: F401  (each import registers its passes)
    channel_prune,
    cleanup,
    compact_block_weights,
    conv_space_to_depth,
    convtranspose_to_conv,
    convtranspose_to_gemm,
    depth_to_space_nhwc,
    fold_batchnorm,
    fold_weights,
    fp16_convert,
    insert_qdq,
    int8_rewrites,
    magnitude_prune,
    nm_prune,
    resize_nhwc,
    weight_only_quantize,
)
