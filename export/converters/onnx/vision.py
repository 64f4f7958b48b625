"""The other two graphs of a vision-language ONNX folder (onnxruntime-genai's vision / embedding / decoder split):

- vision.onnx: `pixel_values` [N, 3, S, S] (normalised as the model's processor does) -> `image_features`
  [N, tokens_per_image, d]: export.models.vlm.VisionLanguageModel.image_features (SigLIP tower + projector)
  traced by torch's ONNX exporter -- it has no cache and no fused operator to reach, so its graph is not
  written a second time. Stored as float32, float16 or int8 (MatMulNBits 8-bit weights, blocks of 32).
- embedding.onnx: `input_ids` [B, T] + `image_features` -> `inputs_embeds` [B, T, d]: VisionLanguageModel.embed
  (the scaled token embedding, image placeholders' rows replaced in order by the images' rows)."""
from __future__ import annotations

import numpy as np
import onnx
import torch

from runtime_py.contract import IMAGE_FEATURES, INPUTS_EMBEDS, PIXEL_VALUES

from .body import Body
from .graph import FLOAT, INT64, Graph
from .quantize import _matmul_nbits, _quiet, to_fp16

VISION_QUANT = ("fp32", "fp16", "int8")
VISION_INT8_BLOCK = 32


class _ImageFeatures(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.image_features(pixel_values)


def check_vision_quant(quant: str) -> str:
    if quant not in VISION_QUANT:
        raise ValueError(f"--vision-quant {quant!r}: expected one of {', '.join(VISION_QUANT)}")
    return quant


def build_vision(model, quant: str = "fp32") -> onnx.ModelProto:
    check_vision_quant(quant)
    S = model.config.vision.image_size
    example = torch.zeros(2, 3, S, S)
    images = torch.export.Dim("num_images", min=1, max=256)
    with torch.no_grad():
        program = torch.onnx.export(_ImageFeatures(model).eval(), (example,), None, input_names=[PIXEL_VALUES],
                                    output_names=[IMAGE_FEATURES], dynamic_shapes={PIXEL_VALUES: {0: images}},
                                    dynamo=True, optimize=True, verbose=False)
    proto = program.model_proto
    proto.doc_string = f"{model.config.family} vision encoder + projector, traced by torch.onnx (gemma-export)"
    if quant == "fp16":
        with _quiet():
            proto = to_fp16(proto, keep_io=[PIXEL_VALUES, IMAGE_FEATURES])
    elif quant == "int8":
        with _quiet():
            proto = _matmul_nbits(proto, 8, VISION_INT8_BLOCK, None)
    return proto


def build_embedding(model, state=None, packer=None) -> onnx.ModelProto:
    """Mirrors VisionLanguageModel.embed (export.models.vlm). state, packer: as for build_vision_decoder."""
    vc = model.config
    c = vc.text
    g = Graph(packer)
    body = Body(g, c, model.language_model.state_dict() if state is None else state)
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    feats = g.input(IMAGE_FEATURES, FLOAT, ["num_images", vc.tokens_per_image, c.hidden_size])     # see unranked
    n = "/embed"
    is_img = g.op("Equal", [ids, g.const(vc.image_token_id)], f"{n}/is_image")                        # [B, T]
    body.embed(g.op("Where", [is_img, g.const(0), ids], f"{n}/ids"))
    # Row k of [zeros; image rows] for the k-th placeholder (counted over the batch), row 0 elsewhere.
    rows = g.op("Concat", [g.const(np.zeros((1, c.hidden_size), np.float32), np.float32),
                           g.op("Reshape", [feats, g.const([-1, c.hidden_size])], f"{n}/rows")], f"{n}/padded", axis=0)
    flat = g.op("Cast", [g.op("Reshape", [is_img, g.const([-1])], f"{n}/flat")], f"{n}/flat_i", to=onnx.TensorProto.INT64)
    k = g.op("Mul", [g.op("CumSum", [flat, g.const(0)], f"{n}/CumSum"), flat], f"{n}/k")
    picked = g.op("Reshape", [g.op("Gather", [rows, k], f"{n}/Gather", axis=0),
                              g.op("Shape", [body.residual], f"{n}/shape")], f"{n}/picked")
    g.op("Where", [g.op("Unsqueeze", [is_img, g.const([2])], f"{n}/is_image3"), picked, body.residual], f"{n}/Where",
         outputs=[INPUTS_EMBEDS])
    g.output(INPUTS_EMBEDS, FLOAT, ["batch_size", "sequence_length", c.hidden_size])
    return g.model(doc=f"{vc.family} token embedding + image rows, exported by gemma-export")


def unranked(proto: onnx.ModelProto, name: str = IMAGE_FEATURES) -> onnx.ModelProto:
    """The input `name` without a declared shape (after onnx's checker, which wants one): onnxruntime-genai 0.18
    feeds image_features as [N, tokens, d] with images and as [0, d] on text-only prompts and decode steps, and
    onnxruntime refuses a rank the graph declares otherwise. The graph reshapes it to rows either way."""
    for inp in proto.graph.input:
        if inp.name == name:
            inp.type.tensor_type.ClearField("shape")
    return proto

