"""ONNX export of the three graphs (one ONNX file each, weights in external data) and their parity check against PyTorch."""
