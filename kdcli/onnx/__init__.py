"""ONNX: export (torch -> ONNX), parity (onnxruntime vs PyTorch), quantize (int8), latency, report (report.md, plot)."""
