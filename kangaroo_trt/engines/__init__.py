"""TensorRT plan building on Polygraphy's loaders (``builder.py``) and the operator pre-check (``onnx_support.py``).

TensorRT is optional. Without it, ``kangaroo-export`` says in one line what to install and still writes
the ONNX graphs. Status of the TensorRT path: the README's backend table.
"""
