"""A small real ONNX image model the tests build: it scores how bright an image is."""

from __future__ import annotations

from pathlib import Path

import onnx
import yaml
from onnx import TensorProto, helper


def brightness_model(path: Path, size: int = 32) -> Path:
    """Input `pixels` [N, 3, size, size] in 0..1; output `scores` [N, 2] = (dark, bright),
    bright = sigmoid(20 * (mean - 0.5))."""
    nodes = [
        helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
        helper.make_node("Sub", ["mean", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["bright"]),
        helper.make_node("Sub", ["one", "bright"], ["dark"]),
        helper.make_node("Unsqueeze", ["dark", "last"], ["dark2"]),
        helper.make_node("Unsqueeze", ["bright", "last"], ["bright2"]),
        helper.make_node("Concat", ["dark2", "bright2"], ["scores"], axis=1),
    ]
    constants = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [20.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("last", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def registry_with_image_model(tmp: Path) -> Path:
    """The built-in text model (its paths made absolute) plus the brightness model, as a registry file."""
    from pipeline.models.registry import DEFAULT_REGISTRY

    brightness_model(tmp / "brightness.onnx")
    [text] = [m for m in yaml.safe_load(DEFAULT_REGISTRY.read_text())["models"] if m["name"] == "text-default"]
    for key in ("head", "file", "tokenizer"):
        text[key] = str(DEFAULT_REGISTRY.parent / text[key])
    brightness = {
        "name": "brightness",
        "modality": "image",
        "file": "brightness.onnx",
        "input": "pixels",
        "output": "scores",
        "labels": ["dark", "bright"],
        "size": [32, 32],
        "thresholds": {"bright": {"review": 0.9}},
    }
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [text, brightness]}, sort_keys=False))
    return path
