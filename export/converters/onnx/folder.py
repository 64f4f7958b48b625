"""What every ONNX artifact folder ends with: graphs saved (weights beside them when large), the tokenizer in
both forms, manifest.json over everything written."""
from __future__ import annotations

from pathlib import Path

import onnx

from ..artifact import import_record, write_manifest
from ..hf_tokenizer import write_hf_tokenizer
from .spill import settle, spilled

MAX_INLINE_BYTES = 1 << 30     # above this, weights go to <file>.data (protobuf caps at 2 GB)


def _inline(proto: onnx.ModelProto) -> bool:
    return sum(len(t.raw_data) for t in proto.graph.initializer) <= MAX_INLINE_BYTES and not spilled(proto)


def check(proto: onnx.ModelProto) -> None:
    """onnx's checker on a graph in memory, when it is one save_model keeps whole: the checker serializes what
    it is given (protobuf stops at 2 GB, and the copy costs the graph's size again)."""
    if _inline(proto):
        onnx.checker.check_model(proto)


def save_model(proto: onnx.ModelProto, path: Path, checked: bool = False, data_suffix: str = ".data") -> None:
    """Save `proto` (weights in <file><data_suffix> when large or spilled) after onnx's checker (unless `checked`): on
    the graph in memory, or, when its weights go beside it, on the saved file (it reads the graph, not the weights)."""
    if _inline(proto):
        if not checked:
            check(proto)
        onnx.save_model(proto, str(path))
        return
    settle(proto, path.parent / (path.name + data_suffix))       # spill.py: weights already on disk go first
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + data_suffix, size_threshold=1024)
    if not checked:
        onnx.checker.check_model(str(path))


def finish_folder(tmp: Path, loaded, recipe, context: int, carried: dict, extra: dict,
                  extra_tokens: dict[int, str] | None = None, chat_template: str | None = None) -> None:
    """tokenizer.model + the Hugging Face tokenizer files (with `extra_tokens` past the pieces; an embedding
    model's append <eos>, as EmbeddingGemma's tokenizer does), then manifest.json (config, recipe, import
    record)."""
    if loaded.tokenizer is not None:
        loaded.tokenizer.save(tmp / "tokenizer.model")
        write_hf_tokenizer(loaded.tokenizer.model_proto(), tmp, model_max_length=context, extra_tokens=extra_tokens,
                           add_eos=getattr(loaded.config, "embedding_head", None) is not None,
                           chat_template=chat_template)
    extra.update(import_record(loaded, carried))
    write_manifest(tmp, source=str(loaded.source), config=loaded.config, recipe=recipe, target="onnx", extra=extra,
                   mmproj=getattr(loaded, "mmproj", None))
