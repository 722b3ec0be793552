"""Backend interface, runtime backends, the Kangaroo decoding loop, stats and the Python API."""
