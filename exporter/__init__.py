"""PyTorch generator -> ONNX, with a parity check in onnxruntime."""
