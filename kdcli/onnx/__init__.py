"""ONNX: export, parity in onnxruntime, int8 quantization, latency and its report."""
