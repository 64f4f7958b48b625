"""The other two graphs of a vision-language ONNX folder (onnxruntime-genai's vision / embedding / decoder split):

- vision.onnx: `pixel_values` [N, 3, S, S] (normalised as the model's processor does) -> `image_features`
  [N, tokens_per_image, d]: export.models.vlm.VisionLanguageModel.image_features (SigLIP tower + projector)
  traced by torch's ONNX exporter -- it has no cache and no fused operator to reach, so its graph is not
  written a second time. Stored as float32, float16 or int8 (MatMulNBits 8-bit weights and int8 activations,
  blocks of 32).
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
# int8 activations per block too (MatMulNBits accuracy_level 4): with float activations its 8-bit path dequantizes
# the weights and runs slower than float32 on CPU; with int8 ones it runs faster (bench/vision_quant.py, README)
VISION_INT8_LEVEL = 4


class _ImageFeatures(torch.nn.Module):
    """VisionLanguageModel.image_features with only the modules it runs (the decoder is not traced, and may
    live elsewhere, e.g. on the meta device)."""

    def __init__(self, model):
        super().__init__()
        self.vision_tower, self.multi_modal_projector = model.vision_tower, model.multi_modal_projector
        self.image_features = type(model).image_features.__get__(self)

    def forward(self, pixel_values):
        return self.image_features(pixel_values)


def _without_trace(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what torch's exporter records per node and value (the Python stack trace with this checkout's absolute
    paths, module names, FX node text): the file's bytes then depend on the model alone, not on where it was built."""
    def clean(graph: onnx.GraphProto) -> None:
        for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
            del value.metadata_props[:]
        for node in graph.node:
            del node.metadata_props[:]
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs]:
                    clean(sub)
    clean(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            del node.metadata_props[:]
    return proto


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
    proto = _without_trace(program.model_proto)
    proto.doc_string = f"{model.config.family} vision encoder + projector, traced by torch.onnx (gemma-export)"
    if quant == "fp16":
        with _quiet():
            proto = to_fp16(proto, keep_io=[PIXEL_VALUES, IMAGE_FEATURES])
    elif quant == "int8":
        with _quiet():
            proto = _matmul_nbits(proto, 8, VISION_INT8_BLOCK, VISION_INT8_LEVEL)
    return proto


def build_embedding(model, state=None, packer=None) -> onnx.ModelProto:
    """Mirrors VisionLanguageModel.embed (export.models.vlm): input_ids [B, T] + image_features [N, tokens, d]
    (or no rows) -> inputs_embeds [B, T, d]. state, packer: as for build_vision_decoder."""
    vc = model.config
    c = vc.text
    g = Graph(packer)
    body = Body(g, c, model.language_model.state_dict() if state is None else state)
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    feats = g.input(IMAGE_FEATURES, FLOAT, ["num_images", vc.tokens_per_image, c.hidden_size])     # see unranked
    n = "/embed"
    is_img = g.op("Equal", [ids, g.const(vc.image_token_id)], f"{n}/is_image")                        # [B, T]
    outside = vc.image_token_id >= c.vocab_size          # transformers looks up id 0 for such a placeholder
    body.embed(g.op("Where", [is_img, g.const(0), ids], f"{n}/ids") if outside else ids)
    # The k-th placeholder (counted over the batch) takes row k of [zeros; image rows] while there are rows:
    # without images (a text prompt, a decode step) a placeholder stays an ordinary token, as in transformers.
    flat_rows = g.op("Reshape", [feats, g.const([-1, c.hidden_size])], f"{n}/rows")
    rows = g.op("Concat", [g.const(np.zeros((1, c.hidden_size), np.float32), np.float32), flat_rows],
                f"{n}/padded", axis=0)
    count = g.op("Shape", [flat_rows], f"{n}/count", start=0, end=1)                                  # [1]
    flat = g.op("Cast", [g.op("Reshape", [is_img, g.const([-1])], f"{n}/flat")], f"{n}/flat_i", to=onnx.TensorProto.INT64)
    k = g.op("Mul", [g.op("CumSum", [flat, g.const(0)], f"{n}/CumSum"), flat], f"{n}/k")
    use = g.op("And", [is_img, g.op("Reshape", [g.op("LessOrEqual", [k, count], f"{n}/has_row"),
                                                g.op("Shape", [ids], f"{n}/ids_shape")], f"{n}/has_row2d")],
               f"{n}/use")
    k = g.op("Min", [k, count], f"{n}/k_in_range")          # placeholders past the rows read a row, unused
    picked = g.op("Reshape", [g.op("Gather", [rows, k], f"{n}/Gather", axis=0),
                              g.op("Shape", [body.residual], f"{n}/shape")], f"{n}/picked")
    g.op("Where", [g.op("Unsqueeze", [use, g.const([2])], f"{n}/use3"), picked, body.residual], f"{n}/Where",
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

