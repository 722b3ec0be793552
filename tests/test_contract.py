"""The graph contract's dimensions: typed inside, one symbolic name in ONNX and the manifest."""

from __future__ import annotations

import pytest

from kangaroo_trt.contract.spec import NEW_TOKENS, Capped, GraphSpec, TensorSpec
from kangaroo_trt.errors import EngineDirError


def test_capped_dimension_round_trips_through_its_name():
    spec = GraphSpec("deep", (TensorSpec("hidden", "float32", (1, NEW_TOKENS, 4)),),
                     (TensorSpec("target_ids", "int64", (1, Capped(8))),), ())
    d = spec.to_dict()
    assert d["outputs"][0]["shape"] == [1, "min(n,8)"]
    assert GraphSpec.from_dict(d) == spec
    assert spec.head_rows == 8 and spec.outputs[0].concrete(3) == (1, 3) and spec.outputs[0].concrete(20) == (1, 8)
    assert spec.dynamic_axes() == {"hidden": {1: "n"}, "target_ids": {1: "min(n,8)"}}
    d["outputs"][0]["shape"] = [1, "max(n,8)"]
    with pytest.raises(EngineDirError, match="unknown dimension 'max\\(n,8\\)'"):
        GraphSpec.from_dict(d)
