"""The engine directory's contract, which every layer reads: graph I/O specs, the manifest, TensorRT profiles and
plan records. It imports only ``config`` and ``errors``."""
