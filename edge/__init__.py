"""The edge bundle: a compressed model packed to run without torch or gencompress.

``bundle.ship(model, out_dir, targets=...)`` (the verb ``gencompress.ship``) writes
OUT_DIR/model.onnx + manifest.json and, per target, ``python`` (sample.py: onnxruntime + numpy
only), ``ort`` (model.ort + required_operators.config from onnxruntime's own converter) and ``web``
(web/: an onnxruntime-web page, runtime vendored); ``browser`` serves and runs the page in Chromium.
"""
