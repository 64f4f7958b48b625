"""What a vision-language `.litertlm` adds to a text one (LiteRT-LM 0.18.1's contract, verified by
tools/litertlm_vision_probe.py --suite): the five TFLite sections, a generic model type with images enabled
(the engine replaces each <start_of_image> the jinja template writes by "\\n\\n" <start_of_image>, the image's
rows, the end-of-vision row, "\\n\\n" for Gemma 3: transformers' ids exactly; PaliGemma: the rows, then the
end-of-vision row standing for <bos>), and the attention mask type the decoder's `mask` input is filled with.
(llm_model_type gemma3 would drop the end-of-vision row: not used.)"""
from __future__ import annotations

from pathlib import Path

from runtime_py.contract import LITERT_VISION_FILES, VISION_BIDIRECTIONAL
from runtime_py.vision_prompts import (END_OF_IMAGE, GEMMA3_CHAT_TEMPLATE, IMAGE_PADDING, PALIGEMMA_LITERT_TEMPLATE,
                                       START_OF_IMAGE)

GEMMA3 = "gemma3"


def vision_files(folder: Path, facts: dict) -> list[tuple[str, Path]]:
    """[(section model type, .tflite path)] of an artifact folder, every file checked present."""
    out = []
    for section, name in LITERT_VISION_FILES.items():
        path = folder / (facts.get("files") or {}).get(section, name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (a vision-language .litertlm bundle needs the artifact's "
                                    f"{', '.join(LITERT_VISION_FILES.values())})")
        out.append((section, path))
    return out


def check_markers(model_proto: bytes, facts: dict, where: str) -> None:
    """Gemma 3: the engine looks the image markers up by their pieces in the bundle's tokenizer: their ids must
    be the model's."""
    if facts["kind"] != GEMMA3:
        return
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    for piece, want in ((START_OF_IMAGE, facts["boi_id"]), (END_OF_IMAGE, facts["eoi_id"])):
        got = sp.piece_to_id(piece)
        if sp.id_to_piece(got) != piece or got != want:
            raise ValueError(f"{where}: the tokenizer's {piece} is id {got if sp.id_to_piece(got) == piece else None}, "
                             f"the model's is {want}; LiteRT-LM finds the image markers by their pieces")


def vision_llm_metadata(meta, facts: dict) -> None:
    """Turn a text LlmMetadata (bundle.llm_metadata) into the vision one, in place."""
    gemma3 = facts["kind"] == GEMMA3
    size = int(facts["image_size"])
    meta.ClearField("prompt_templates")
    meta.jinja_prompt_template = GEMMA3_CHAT_TEMPLATE if gemma3 else PALIGEMMA_LITERT_TEMPLATE
    if not gemma3:
        meta.ClearField("start_token")       # PaliGemma's <bos> follows the image: the end-of-vision row
    meta.llm_model_type.ClearField("gemma3")
    g = meta.llm_model_type.generic_model
    g.SetInParent()
    g.image_enabled, g.add_image_end = True, True
    g.delimiter_regex, g.image_token_regex = f"({START_OF_IMAGE})", START_OF_IMAGE
    g.image_tensor_height = g.image_tensor_width = size
    if gemma3:
        g.start_of_image_token.token_str, g.end_of_image_token.token_str = START_OF_IMAGE, END_OF_IMAGE
        g.image_prefix = g.image_suffix = IMAGE_PADDING


def vision_mask_type(executor, facts: dict) -> None:
    """The executor metadata's attention mask type (what the engine fills the decoder's `mask` with)."""
    from litert_lm_builder.runtime.proto import executor_metadata_pb2 as ex
    kind = (ex.ATTENTION_MASK_TYPE_VISION_BIDIRECTIONAL if facts.get("attention_mask") == VISION_BIDIRECTIONAL
            else ex.ATTENTION_MASK_TYPE_BIDIRECTIONAL)
    settings = executor.llm_executor_metadata.attention_mask_settings
    settings.attention_mask_type = settings.local_attention_mask_type = kind
