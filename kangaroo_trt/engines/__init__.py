"""TensorRT engine building: optimization profiles, plan building (lazy ``tensorrt`` import), plan bookkeeping.

TensorRT is optional. Without it, ``kangaroo-export`` says in one line what to install and still writes
the ONNX graphs. Nothing here has been run against a real TensorRT (see ``builder.py``).
"""
