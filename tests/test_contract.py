"""One home for each fact: the artifact contract (runtime_py.contract), the family table (export.models.families),
atomic writes (runtime_py.files), the machine measurements (devices.measure); runtime_py without an import cycle.
The facts are checked against the libraries that define them (transformers, gguf-py); the homes by reading the
source (one spelling of each fact, an acyclic import graph)."""
from __future__ import annotations

import ast
import json
import mmap
import resource
from pathlib import Path

import gguf
import pytest
import transformers as tf

from devices.measure import attended_positions, kv_bytes, peak_rss_mb, reset_peak_rss
from export.models.families import FAMILIES, GGUF_ARCHS, HF_ARCHITECTURES, SPECIAL_TOKENS, special_token_ids
from runtime_py import contract
from runtime_py.files import atomic_path, read_json, write_atomic

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("export", "runtime_py", "devices", "bench")


def _sources(*packages: str):
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _code_strings(path: Path) -> list[str]:
    """The string constants of a module's code (docstrings left out: prose may name a fact)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


# --- the facts, against the libraries that define them --------------------------------------------------------

def test_layer_type_strings_are_transformers_own():
    types = set(tf.Gemma3TextConfig(num_hidden_layers=6).layer_types)
    assert types == {contract.FULL_ATTENTION, contract.SLIDING_ATTENTION}
    assert contract.RECURRENT in tf.RecurrentGemmaConfig().block_types


def test_family_defaults_are_what_transformers_assumes():
    g2 = tf.Gemma2Config()
    assert (FAMILIES["gemma2"].attn_softcap, FAMILIES["gemma2"].final_softcap, FAMILIES["gemma2"].sliding_window) \
        == (g2.attn_logit_softcapping, g2.final_logit_softcapping, g2.sliding_window)
    rg = tf.RecurrentGemmaConfig()
    fam = FAMILIES["recurrentgemma"]
    assert (fam.final_softcap, fam.sliding_window, fam.conv1d_width, fam.rope_fraction, fam.rope_base) == \
        (rg.logits_soft_cap, rg.attention_window_size, rg.conv1d_width, rg.rope_parameters["partial_rotary_factor"],
         rg.rope_parameters["rope_theta"])
    g3 = tf.Gemma3TextConfig(num_hidden_layers=12)
    locals_per_global = g3.layer_types.index(contract.FULL_ATTENTION)
    assert FAMILIES["gemma3"].local_per_global == locals_per_global == FAMILIES["embeddinggemma"].local_per_global
    rope = g3.rope_parameters
    assert FAMILIES["gemma3"].rope_base == rope[contract.FULL_ATTENTION]["rope_theta"]
    assert FAMILIES["gemma3"].local_rope_base == rope[contract.SLIDING_ATTENTION]["rope_theta"]


def test_architecture_names_exist_in_transformers_and_gguf():
    assert all(hasattr(tf, arch) for arch in HF_ARCHITECTURES)
    assert set(GGUF_ARCHS) <= set(gguf.MODEL_ARCH_NAMES.values())
    assert {f.family for f in FAMILIES.values()} == {f.family for f in HF_ARCHITECTURES.values()}


def test_special_token_keys_are_transformers_and_gguf_names():
    assert [hf for hf, _ in SPECIAL_TOKENS.values()] == ["bos_token_id", "eos_token_id", "pad_token_id"]
    hf_config = tf.Gemma3TextConfig()
    assert special_token_ids(lambda key: getattr(hf_config, key), "hf") == {"bos_id": 2, "eos_id": 1, "pad_id": 0}
    keys = gguf.Keys.Tokenizer
    assert [g for _, g in SPECIAL_TOKENS.values()] == [keys.BOS_ID, keys.EOS_ID, keys.PAD_ID]
    cfg = {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": None}
    assert special_token_ids(cfg.get, "hf") == {"bos_id": 2, "eos_id": 1}


# --- one home each ---------------------------------------------------------------------------------------------

FACTS = {contract.FULL_ATTENTION, contract.SLIDING_ATTENTION, contract.CONFIG_KEY, contract.START_OF_TURN,
         contract.END_OF_TURN, contract.KV_CACHE_PREFIX, *contract.STATE_PREFIXES, *contract.ONNX_PAST_NAMES,
         *contract.ONNX_PRESENT_NAMES}


@pytest.mark.parametrize("path", list(_sources(*PRODUCT)), ids=lambda p: str(p.relative_to(ROOT)))
def test_contract_facts_are_spelled_only_in_the_contract(path):
    if path == ROOT / "runtime_py" / "contract.py":
        return
    found = sorted({fact for s in _code_strings(path) for fact in FACTS if fact in s})
    assert not found, f"{path.relative_to(ROOT)} spells {found}: import them from runtime_py.contract"


def test_defaults_and_names_are_defined_once():
    """DEFAULT_CONTEXT, DEFAULT_PREFILL, CONFIG_KEY and the turn markers are assigned in runtime_py.contract only,
    and no other module writes the default prefill lengths out."""
    names = {"DEFAULT_CONTEXT", "DEFAULT_PREFILL", "PREFILL_LENGTHS", "CONTEXT", "CONFIG_KEY", "START_OF_TURN",
             "END_OF_TURN", "CACHE_PREFIX", "STATE_PREFIXES"}
    for p in _sources(*PRODUCT):
        if p.name == "contract.py":
            continue
        tree = ast.parse(p.read_text())
        assigned = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in ast.walk(n)
                    if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
        assert not assigned & names, f"{p.relative_to(ROOT)} defines {sorted(assigned & names)}"
        tuples = [ast.literal_eval(n) for n in ast.walk(tree) if isinstance(n, (ast.Tuple, ast.List))
                  and all(isinstance(e, ast.Constant) for e in n.elts) and n.elts]
        assert [32, 128, 512] not in [list(t) for t in tuples], p.relative_to(ROOT)


def test_files_are_replaced_atomically_in_one_place():
    """os.replace of a file only in runtime_py.files (export.converters.output swaps whole folders)."""
    calls = [str(p.relative_to(ROOT)) for p in _sources(*PRODUCT)
             for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("replace", "rename")
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "os"]
    assert sorted(set(calls)) == ["export/converters/output.py", "runtime_py/files.py"]


def test_atomic_path_publishes_whole_files_or_nothing(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("failed mid-write")
    assert target.read_bytes() == b"old" and [p.name for p in target.parent.iterdir()] == ["f.bin"]
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["f.bin"]
    write_atomic(tmp_path / "t.json", json.dumps({"a": 1}))
    assert read_json(tmp_path / "t.json") == {"a": 1}


def _imports(path: Path, package: str) -> set[str]:
    """The sibling modules of `package` that a module imports (anywhere in it, functions included)."""
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level == 1 and n.module:
                out.add(n.module.split(".")[0])
            elif n.level == 1:
                out.update(a.name for a in n.names)
            elif (n.module or "").startswith(package + "."):
                out.add(n.module.split(".")[1])
        elif isinstance(n, ast.Import):
            out.update(a.name.split(".")[1] for a in n.names if a.name.startswith(package + "."))
    return out


def test_runtime_py_has_no_import_cycle():
    graph = {p.stem: _imports(p, "runtime_py") - {p.stem} for p in (ROOT / "runtime_py").glob("*.py")
             if p.stem != "__init__"}
    done, stack = set(), []

    def visit(m):
        assert m not in stack, f"import cycle: {' -> '.join(stack[stack.index(m):] + [m])}"
        if m in done:
            return
        stack.append(m)
        for dep in graph.get(m, ()):
            visit(dep)
        stack.pop()
        done.add(m)
    for module in graph:
        visit(module)
    leaves = {m for m, deps in graph.items() if not deps}
    assert {"contract", "files"} <= leaves and not graph["api"] & {"onnx_backend", "litert_backend", "loader"}


def test_models_use_only_runtime_pys_lowest_layer():
    """The reference models may take the artifact contract, file writes, the tokenizer, the sampler and the prompt
    formats from runtime_py, never its backends or its API (the charter's import direction)."""
    lowest = {"contract", "files", "tokenizer", "sampling", "prompts", "vision_prompts"}
    for p in _sources("export/models"):
        tree = ast.parse(p.read_text())
        used = {n.module.split(".")[1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                and (n.module or "").startswith("runtime_py.")}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "runtime_py"
                 for a in n.names}
        assert used <= lowest, f"{p.relative_to(ROOT)} imports runtime_py.{sorted(used - lowest)}"


def test_bench_does_not_reach_into_tests():
    for p in _sources("bench"):
        tree = ast.parse(p.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in modules if m.split(".")[0] in ("tests", "oracle")}, p.relative_to(ROOT)
        assert "tests" not in _code_strings(p), f"{p.relative_to(ROOT)} puts tests/ on the import path"


# --- the machine measurements ----------------------------------------------------------------------------------

def test_kv_bytes_counts_each_layer_type_by_hand():
    config = {"num_kv_heads": 2, "head_dim": 8, "sliding_window": 16,
              "layer_types": [contract.SLIDING_ATTENTION, contract.FULL_ATTENTION, contract.RECURRENT]}
    for position in (4, 100):
        attended = min(position, 16) + position + 0        # a recurrent layer reads no cache
        assert attended_positions(config, position) == attended
        assert kv_bytes(config, position, 2) == attended * 2 * 2 * 8 * 2


def test_peak_rss_is_the_process_high_water_mark():
    reset_peak_rss()
    before = peak_rss_mb()
    block = mmap.mmap(-1, 64 << 20)                               # fresh pages (freed heap could be resident)
    for at in range(0, len(block), mmap.PAGESIZE):                # touch every page: 64 MB more resident
        block[at] = 1
    after = peak_rss_mb()
    assert after - before >= 60
    assert after <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1      # Linux: kB; never reset
