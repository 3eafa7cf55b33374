"""`sluiceway optimize`: INT8 (dynamic or static) and FP16 versions of an ONNX model, checked against
the original for accuracy and speed, and published as the next version in a model repository.

Nothing here is imported by the server's request path: onnxruntime.quantization, onnxconverter-common,
matplotlib and rich are heavy, and each module imports them where it uses them.
"""
