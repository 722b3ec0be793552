"""Graph I/O specs, ONNX export, parity checks, manifest and the atomic engine-directory build."""
