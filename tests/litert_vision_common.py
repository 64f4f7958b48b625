"""What the LiteRT vision tests (test_litert_vision.py: the fp32 bundles; test_litert_vision_quant.py: the
quantized ones, a file of their own so the two xdist workers share the conversions) both use: the bundles' shape,
the chat prompt, the engine's greedy answer, the bundled image pre-sized as runtime_py.images resizes it."""
from __future__ import annotations

from PIL import Image

STEPS = 16
PREFILL, CONTEXT = 64, 128
TEXT = "Describe this image in detail please."


def sized_png(tmp_path_factory, size: int):
    """A bundled image, resized to the model's size as runtime_py.images (transformers' PIL processor) does."""
    from export.data.images import bundled_images
    from runtime_py.images import load_image
    path = tmp_path_factory.mktemp("png") / "image.png"
    Image.fromarray(load_image(bundled_images()[0]["file"])).resize((size, size), Image.BILINEAR).save(path)
    return path


def answer_text(m, ids):
    """The text of `ids` up to the first stop token (what the engine answers)."""
    stops = [i for i, t in enumerate(ids) if t in m.tokenizer.stop_ids]
    return m.tokenizer.decode(ids[:stops[0] if stops else None])


def engine_answer(bundle, png, text, cache):
    """The LiteRT-LM engine's greedy answer to one user message: the image, then `text`."""
    import litert_lm
    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(), vision_backend=litert_lm.Backend.CPU(),
                              cache_dir=str(cache))
    try:
        conv = engine.create_conversation(max_output_tokens=STEPS)
        reply = conv.send_message({"role": "user", "content": [{"type": "image", "path": str(png)},
                                                               {"type": "text", "text": text}]})
        conv.close()
        return str(reply.contents)
    finally:
        engine.close()


def chat_ids(m):
    return m.vision.chat_ids(m.tokenizer, [{"role": "user", "content": [{"type": "image", "image": "unused"},
                                                                         {"type": "text", "text": TEXT}]}])[0]
