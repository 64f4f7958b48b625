"""`.litertlm` bundles (LiteRT-LM's single-file format, what `--target android` / `ios` ship): the
LiteRT artifact's model.tflite (as the PREFILL_DECODE model), its SentencePiece tokenizer and an
LlmMetadata proto (start/stop tokens, Gemma's turn templates, max_num_tokens, model type), written with
litert-lm-builder's Python API, plus an ExecutorMetadata proto that types each KV cache (global / local)
so LiteRT-LM reads the context size from the global caches. The system metadata also carries our manifest's model config
(key `gemma_export_config`, JSON) so runtime_py reads the bundle without guessing. Bundles are reproducible: the
builder's random `uuid` and wall-clock `creation_timestamp` are replaced by a uuid derived from the contents and
SOURCE_DATE_EPOCH (default 0), so the same inputs give the same bytes."""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from runtime_py.contract import (CONFIG_KEY, DEFAULT_PREFILL, END_OF_TURN, PREFILL_DECODE_SECTION, PREFILL_NO_LOGITS,
                                 RECURRENT, SAE_KEY, SLIDING_ATTENTION, TURN_TEMPLATES, VISION_KEY, kv_cache_names,
                                 parse_kv_cache_name)
from runtime_py.files import atomic_path

from ... import __version__
from ..artifact import MANIFEST, sha256, staged_dir, write_manifest
from ..output import work_dir

BUNDLE = "model.litertlm"


def unbundleable(config) -> str | None:
    """Why a .litertlm bundle cannot hold a model (None: it can); config: a GemmaConfig or a manifest's config."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key)
    if (config.get("vision") if isinstance(config, dict) else getattr(config, "vision", None)) is not None:
        return None                       # a vision-language model: its decoder is a plain Gemma one
    family = get("family")
    if get("embedding_head") is not None:
        return None                       # LiteRT-LM's embedding bundle (embedding_bundle.py)
    if RECURRENT in (get("layer_types") or ()):
        return (f"a {family} model has recurrent state tensors, which LiteRT-LM has no buffer type for; use "
                f"--target litert and run it with runtime_py")
    return None


def llm_metadata(config: dict, tokenizer_proto: bytes, max_tokens: int):
    """The LlmMetadata proto for a Gemma model: start token <bos>, stop tokens <eos> and <end_of_turn>
    (ids from the tokenizer; <end_of_turn> only if the vocabulary has it), Gemma's user/model turn
    templates, max_num_tokens, llm_model_type gemma3 for Gemma 3 (generic otherwise)."""
    import sentencepiece as spm
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, llm_model_type_pb2

    sp = spm.SentencePieceProcessor(model_proto=tokenizer_proto)
    bos = sp.bos_id() if sp.bos_id() >= 0 else config.get("bos_id")
    eos = sp.eos_id() if sp.eos_id() >= 0 else config.get("eos_id")
    if bos is None or eos is None:
        raise ValueError("the tokenizer defines no <bos>/<eos> id and the config names none")
    stops = [int(eos)]
    turn = sp.piece_to_id(END_OF_TURN)
    if turn != sp.unk_id() and sp.id_to_piece(turn) == END_OF_TURN and turn not in stops:
        stops.append(int(turn))
    meta = llm_metadata_pb2.LlmMetadata()
    meta.start_token.token_ids.ids.append(int(bos))
    for token in stops:
        meta.stop_tokens.add().token_ids.ids.append(token)
    for role, (prefix, suffix) in TURN_TEMPLATES.items():      # <bos> comes from start_token
        affixes = getattr(meta.prompt_templates, role)
        affixes.prefix, affixes.suffix = prefix, suffix
    meta.max_num_tokens = int(max_tokens)
    if config.get("family") == "gemma3":
        meta.llm_model_type.gemma3.CopyFrom(llm_model_type_pb2.Gemma3())
    else:
        meta.llm_model_type.generic_model.CopyFrom(llm_model_type_pb2.GenericModel())
    return meta


def executor_metadata(config: dict, cache_names: list[str]):
    """The ExecutorMetadata proto naming every KV cache as a global or local (sliding) key/value cache with
    its sequence axis (2: [1, G, S, D]). Without it LiteRT-LM (no mask input) takes the context size from the
    first key cache's axis 2 -- kv_cache_k_0, a sliding layer's window-sized ring buffer for Gemma 2/3 -- and
    refuses longer prompts; with it the limit is the shortest global cache."""
    from litert_lm_builder.runtime.proto import executor_metadata_pb2

    buffer = executor_metadata_pb2.StateBuffer
    types = {("k", True): buffer.TYPE_GLOBAL_KEY_CACHE, ("v", True): buffer.TYPE_GLOBAL_VALUE_CACHE,
             ("k", False): buffer.TYPE_LOCAL_KEY_CACHE, ("v", False): buffer.TYPE_LOCAL_VALUE_CACHE}
    layer_types = config.get("layer_types") or []
    meta = executor_metadata_pb2.ExecutorMetadata()
    for name in cache_names:
        kv, layer = parse_kv_cache_name(name)
        is_global = layer >= len(layer_types) or layer_types[layer] != SLIDING_ATTENTION
        state = meta.llm_executor_metadata.state_buffers.add()
        state.prefill_input_name = state.prefill_output_name = name
        state.decode_input_name = state.decode_output_name = name
        state.type, state.sequence_axis = types[kv, is_global], 2
    return meta


@contextlib.contextmanager
def _reproducible_system_metadata(system: dict, *inputs: Path):
    """litert-lm-builder stamps every build with uuid4() and now(): stamp it with a uuid5 of the inputs (the
    system metadata and the files' hashes) and SOURCE_DATE_EPOCH instead (the reproducible-builds convention)."""
    from litert_lm_builder import DType, Metadata, litertlm_builder

    digest = hashlib.sha256(json.dumps(system, sort_keys=True).encode())
    for path in inputs:
        digest.update(sha256(path).encode())
    stamp = datetime.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), datetime.timezone.utc)
    fixed = [Metadata(key="uuid", value=str(uuid.uuid5(uuid.NAMESPACE_OID, digest.hexdigest())), dtype=DType.STRING),
             Metadata(key="creation_timestamp", value=stamp.isoformat(), dtype=DType.STRING)]
    original = litertlm_builder.populate_system_metadata
    litertlm_builder.populate_system_metadata = lambda entries: [
        m for m in entries if m.key not in ("uuid", "creation_timestamp")] + fixed
    try:
        yield
    finally:
        litertlm_builder.populate_system_metadata = original


def build_litertlm(folder: str | Path, out_file: str | Path, *, max_tokens: int | None = None) -> Path:
    """Bundle a LiteRT artifact folder (model.tflite, tokenizer.model, manifest.json, as export_litert
    writes it; a vision-language one also its embedder, vision encoder / adapter and end-of-vision models)
    into `out_file` (.litertlm), atomically: a temporary sibling renamed into place.
    max_tokens: LlmMetadata.max_num_tokens (default and maximum: the artifact's context length)."""
    from .embedding_bundle import KIND as EMBEDDING_KIND, build_embedding_litertlm
    from .vision_bundle import check_markers, vision_files, vision_llm_metadata, vision_mask_type

    folder, out_file = Path(folder), Path(out_file)
    model, tok = folder / "model.tflite", folder / "tokenizer.model"
    manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    if manifest.get("kind") == EMBEDDING_KIND:
        return build_embedding_litertlm(folder, out_file, manifest)
    for p in (model, tok, folder / MANIFEST):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (a .litertlm bundle needs the LiteRT artifact's "
                                    f"model.tflite, tokenizer.model and {MANIFEST})")
    config, context = manifest.get("config") or {}, int(manifest.get("context_length") or 0)
    if why := unbundleable(config):
        raise ValueError(f"{folder / MANIFEST}: {why}")
    vision = manifest.get(VISION_KEY)
    models = vision_files(folder, vision) if vision else [(PREFILL_DECODE_SECTION, model)]
    text = config.get("text") if vision else config          # the decoder's config
    max_tokens = int(max_tokens or context)
    if max_tokens < 1 or (context and max_tokens > context):
        raise ValueError(f"max_tokens {max_tokens}: must be between 1 and the artifact's context length {context}")
    meta = llm_metadata(text, tok.read_bytes(), max_tokens)
    names = (manifest.get("kv_cache") or {}).get("names") or [
        name for i in range(len(text.get("layer_types") or [])) for name in kv_cache_names(i)]
    executor = executor_metadata(text, names)
    if vision:
        check_markers(tok.read_bytes(), vision, str(tok))
        check_encoder_size(dict(models)["tf_lite_vision_encoder"], int(vision["image_size"]))
        vision_llm_metadata(meta, vision)
        vision_mask_type(executor, vision)
    facts = {"config": config, "context_length": context, "prefill_lengths": manifest.get("prefill_lengths"),
             "recipe": manifest.get("recipe"), "source": manifest.get("source"),
             **({VISION_KEY: vision} if vision else {}),
             **({SAE_KEY: manifest[SAE_KEY]} if SAE_KEY in manifest else {})}
    write_litertlm(out_file, system_metadata(facts), tok, models, llm=meta, executor=executor)
    return out_file


def system_metadata(facts: dict) -> dict[str, str]:
    """The bundle's system metadata: who wrote it and our facts (CONFIG_KEY, JSON) for runtime_py."""
    return {"Authors": "gemma-export", "tool": "gemma-export", "tool_version": __version__,
            CONFIG_KEY: json.dumps(facts, sort_keys=True, separators=(",", ":"))}


def write_litertlm(out_file: Path, system: dict, tok: Path, models: list[tuple[str, Path]], *, llm=None,
                   executor=None, embedding=None) -> None:
    """Write a .litertlm atomically: the system metadata {key: str}, the metadata protos given (LlmMetadata,
    ExecutorMetadata, EmbeddingMetadata), the SentencePiece tokenizer and the TFLite sections [(model type,
    path)], stamped reproducibly."""
    from litert_lm_builder import DType, LitertLmFileBuilder, Metadata, TfLiteModelType

    protos = [(name, proto) for name, proto in (("llm", llm), ("executor", executor), ("embedding", embedding))
              if proto is not None]
    files = {name: out_file.with_name(f".{out_file.name}.{os.getpid()}.{name}_metadata.pb") for name, _ in protos}
    try:
        with atomic_path(out_file) as tmp:
            builder = LitertLmFileBuilder()
            for key, value in system.items():
                builder.add_system_metadata(Metadata(key=key, value=value, dtype=DType.STRING))
            for name, proto in protos:
                files[name].write_bytes(proto.SerializeToString())
                getattr(builder, f"add_{name}_metadata")(str(files[name]))
            builder.add_sentencepiece_tokenizer(str(tok))
            for section, path in models:
                builder.add_tflite_model(str(path), TfLiteModelType(section))
            with open(tmp, "wb") as f, _reproducible_system_metadata(system, *files.values(), tok,
                                                                     *(path for _, path in models)):
                builder.build(f)
            tmp.chmod(0o644)
    finally:
        for path in files.values():
            path.unlink(missing_ok=True)


def check_encoder_size(encoder: Path, size: int) -> None:
    """LiteRT-LM stretches every image to the metadata's size and feeds it to the encoder whatever its input
    shape: the two must agree (the engine does not check)."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(encoder))
    (name,) = it.get_signature_list()
    (shape,) = (d["shape"] for d in it.get_signature_runner(name).get_input_details().values())
    if tuple(int(x) for x in shape) != (1, size, size, 3):
        raise ValueError(f"{encoder}: its input is {list(shape)}, the metadata's image size {size}x{size} "
                         f"(expected [1, {size}, {size}, 3])")


def export_litertlm(loaded, out_dir: str | Path, recipe: str = "fp32", prefill_lengths=None,
                    cache_length: int | None = None, vision_quant: str | None = None, consume: bool = False,
                    sae=None) -> Path:
    """Export a LoadedModel (causal, vision-language or EmbeddingGemma) to `out_dir`: model.litertlm (+
    tokenizer.model and manifest.json beside it; with `sae`, an SaeRequest, the SAEs' decoder rows too). The
    LiteRT artifact is converted into a temporary folder first, then bundled. consume, sae: export_litert's. A text
    model's prefill signatures output no logits (contract.PREFILL_NO_LOGITS): LiteRT-LM runs all but a prompt's last
    token through them and that token through `decode`, never reading prefill logits, and with Gemma's 262k
    vocabulary the LM head over every row would be most of a prefill's work (README, issue #19)."""
    from . import export_litert

    if why := unbundleable(loaded.config):
        raise ValueError(f"{loaded.source}: {why}")
    if sae is not None:
        from .sae import check_request
        check_request(sae, loaded.config)
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.source}: a .litertlm bundle needs the model's tokenizer (tokenizer.model)")
    if hasattr(loaded.config, "vision"):               # before any conversion
        from .vision_bundle import check_markers
        check_markers(loaded.tokenizer.model_proto(), loaded.config.runtime_facts(), f"{loaded.source}")
    out_dir = Path(out_dir)
    with work_dir(out_dir) as work:
        if loaded.config.embedding_head is not None:
            from ...quantize.recipes import recipe as recipe_for
            from .embedding_bundle import export_embedding_litert
            litert = export_embedding_litert(loaded, work / "litert", recipe_for(recipe, "litert"), prefill_lengths)
        else:
            litert = export_litert(loaded, work / "litert", recipe, prefill_lengths or DEFAULT_PREFILL, cache_length,
                                   prefill_logits=PREFILL_NO_LOGITS, consume=consume,
                                   **({"vision_quant": vision_quant} if vision_quant else {}),
                                   **({"sae": sae} if sae else {}))
        inner = json.loads((litert / MANIFEST).read_text())
        with staged_dir(out_dir) as tmp:
            build_litertlm(litert, tmp / BUNDLE)
            shutil.copyfile(litert / "tokenizer.model", tmp / "tokenizer.model")
            for entry in inner.get(SAE_KEY, []):
                shutil.copyfile(litert / entry["decoder"], tmp / entry["decoder"])
            extra = {k: v for k, v in inner.items()
                     if k not in ("tool", "tool_version", "target", "recipe", "source", "config", "files", "plan")}
            write_manifest(tmp, source=str(loaded.source), config=loaded.config, recipe=recipe,
                           target="litertlm", extra={**extra, "bundle": BUNDLE, "tflite": {
                               name: inner["files"][name] for name in inner["files"] if name.endswith(".tflite")}
                               if "model.tflite" not in inner["files"] else {
                               "bytes": inner["files"]["model.tflite"]["bytes"],
                               "sha256": inner["files"]["model.tflite"]["sha256"]}})
    return out_dir
