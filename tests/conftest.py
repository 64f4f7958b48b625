"""What the whole suite shares, built once per session: the real Gemma 3 270M read once (and handed to
every load of the bundled model: the CLI, the pipeline, validate), its fp32 and int4 ONNX artifacts
exported once; one tiny random model per architecture; the tiny LiteRT conversions. Tests that use the
real model are marked `slow` (`pytest -m "not slow"` leaves them out; CI runs everything)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))

def pytest_addoption(parser):
    parser.addoption("--real-litert-sae", action="store_true",
                     help="also run test_sae_real.py on the real 270M's LiteRT export with an SAE (~140 s more)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real Gemma 3 270M (the bundled GGUF); CI runs them too")
    _one_core_per_worker()


def _one_core_per_worker():
    """With pytest-xdist's workers as many as the cores, each worker's torch (and the processes it starts) gets one
    thread: two OpenMP teams of two threads on two cores spend their time waiting at each other's barriers."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", threads)
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items):
    """Every fixture of the real model builds on `real_gguf`: a test that reaches it is slow."""
    for item in items:
        if "real_gguf" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """build(folder) -> artifact path, run once for the whole session: pytest-xdist's workers share the session's
    temporary root, so the first worker to ask builds `name` there under a file lock while another waits, then
    both read it (each worker building its own copy doubled the suite's slowest steps). Read-only."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / "built_once" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.with_name(f"{name}.done")
    with FileLock(f"{folder}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)          # what a failed build left
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session", autouse=True)
def runtime_py_cache(tmp_path_factory):
    """runtime_py keeps XNNPACK's packed weights in files (runtime_py.litert_cache): the suite's go to a folder of
    its session, never the user's cache. The folder."""
    from runtime_py.litert_cache import CACHE_ENV
    folder = tmp_path_factory.getbasetemp() / "runtime_py_cache"
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


# --- tiny random models -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """tiny_hf(arch, tokenizer=False) -> (path, ref): oracle.save_hf_folder's model of `arch`, saved
    once per session. The folder is shared: copy it before editing it; load it with load_model for a model
    of your own (the transformers reference `ref` is shared too: run it, never change it)."""
    from oracle import save_hf_folder
    root, built = tmp_path_factory.mktemp("tiny"), {}

    def get(arch: str, tokenizer: bool = False):
        if (arch, tokenizer) not in built:
            path = root / f"{arch}{'-tokenizer' if tokenizer else ''}"
            ref, _ = save_hf_folder(arch, path, tokenizer=tokenizer)
            built[arch, tokenizer] = SimpleNamespace(path=path, ref=ref)
        return built[arch, tokenizer]
    return get


@pytest.fixture(scope="session")
def tiny_litert(tiny_hf, tmp_path_factory):
    """tiny_litert(arch) -> (folder, hf, ref, prefill, context): the fp32 LiteRT artifact of tiny_hf(arch,
    tokenizer=True), converted once (litert-torch conversions are the suite's slowest tiny step) with the
    prefill lengths of oracle.LITERT_PREFILL and oracle.LITERT_CONTEXT. Read-only."""
    from export.converters.litert import export_litert
    from export.models.checkpoints import load_model
    from oracle import LITERT_CONTEXT, LITERT_PREFILL
    built = {}

    def get(arch: str):
        if arch not in built:
            hf = tiny_hf(arch, tokenizer=True)
            out = built_once(tmp_path_factory, f"litert-{arch}", lambda folder: export_litert(
                load_model(hf.path), folder, prefill_lengths=LITERT_PREFILL[arch], cache_length=LITERT_CONTEXT))
            built[arch] = SimpleNamespace(folder=out, hf=hf.path, ref=hf.ref, prefill=LITERT_PREFILL[arch],
                                          context=LITERT_CONTEXT)
        return built[arch]
    return get


@pytest.fixture(scope="session")
def tiny_embedding_web(tiny_hf, tmp_path_factory):
    """(hf, folder): tiny_hf("embeddinggemma", tokenizer=True) and its fp32 `--target web` folder (transformers.js
    layout, context 512), exported once. Read-only."""
    from export.converters.onnx import export_onnx_web
    from export.models.checkpoints import load_model
    hf = tiny_hf("embeddinggemma", tokenizer=True)
    return SimpleNamespace(hf=hf, folder=built_once(tmp_path_factory, "web-fp32", lambda folder: export_onnx_web(
        load_model(hf.path), folder, "fp32", 512)))


@pytest.fixture(scope="session")
def st_reference(tmp_path_factory):
    """st_reference(folder) -> sentence-transformers' EmbeddingGemma (bench.st_reference: the published folder's
    modules and prompts) of the EmbeddingGemma weights in `folder` (oracle.save_hf_folder's, with tokenizer.model),
    written and loaded once per folder: the reference every embedding test compares to. Run it, never change it
    (a test that sets max_seq_length sets it back)."""
    from bench.st_reference import load_sentence_transformer, write_sentence_transformer
    built = {}

    def get(folder):
        if str(folder) not in built:
            out = write_sentence_transformer(folder, tmp_path_factory.mktemp("st") / "st")
            built[str(folder)] = load_sentence_transformer(out)
        return built[str(folder)]
    return get


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session (bench.browser.Chromium: tools/web/browser.mjs, its local server and
    puppeteer-core), closed at the session's end. Its pages run one at a time."""
    from bench.browser import Chromium
    browser = Chromium()
    yield browser
    browser.close()


# --- the real Gemma 3 270M --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_gguf() -> Path:
    """The bundled GGUF file."""
    from export.models.checkpoints.default import default_model_path
    return default_model_path()


@pytest.fixture(scope="session")
def real_gguf_reader(real_gguf):
    """gguf-py's reader of the bundled GGUF (parsing its 262k-token vocabulary takes seconds)."""
    import gguf
    return gguf.GGUFReader(real_gguf)


@pytest.fixture(scope="session")
def real_tokenizer_proto(real_gguf, request, tmp_path_factory) -> bytes:
    """The SentencePiece model rebuilt from the bundled GGUF's vocabulary (once for all workers: a worker that
    needs only this reads the file another wrote, without parsing the GGUF; real_gguf keeps its users `slow`)."""
    from export.models.checkpoints.gguf_tokenizer import sentencepiece_model_from_gguf

    def rebuild(path: Path) -> Path:
        path.write_bytes(sentencepiece_model_from_gguf(request.getfixturevalue("real_gguf_reader")))
        return path
    return built_once(tmp_path_factory, "tokenizer.model", rebuild).read_bytes()


@pytest.fixture(scope="session")
def real_model(real_gguf):
    """The bundled Gemma 3 270M as load_model() gives it, read once. While the session lasts, every
    load_model() of the bundled model in float32 (by the CLI, the pipeline, validate) returns this same
    object: nothing in them changes a model they are given."""
    import torch

    import export.models.checkpoints as checkpoints
    original = checkpoints.load_model
    loaded = original(real_gguf)

    def load_model(source=None, dtype=torch.float32, mmproj=None):
        if dtype == torch.float32 and mmproj is None and checkpoints.resolve(source) == loaded.source:
            return loaded
        return original(source, dtype, mmproj=mmproj)
    patch = pytest.MonkeyPatch()
    for module in [m for m in list(sys.modules.values()) if getattr(m, "load_model", None) is original]:
        patch.setattr(module, "load_model", load_model)        # imported by name before the session began
    yield loaded
    patch.undo()


@pytest.fixture(scope="session")
def hf_real(real_model):
    """transformers' own model of the bundled GGUF (it dequantizes the file itself; ~40 s to read), the
    independent reference on the real model. Shared: run it, never change it."""
    import time

    import torch
    import transformers as tf
    path = real_model.source
    t0 = time.perf_counter()
    ref = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    print(f"\nload: transformers {time.perf_counter() - t0:.1f} s")
    return ref


def run_cli(argv: list[str]) -> tuple[int, dict]:
    """export.cli.main in this process with --json: (exit status, the JSON it printed)."""
    from export.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([*argv, "--json"])
    return status, json.loads(out.getvalue())


def check_features_cli(artifact, text: str = "hello world", k: int = 4) -> None:
    """`gemma-export features --model ARTIFACT --k K TEXT --json` prints what runtime_py's features() gives on the
    same artifact: each SAE's (indices, values) at every position."""
    import runtime_py
    status, out = run_cli(["features", "--model", str(artifact), "--k", str(k), text])
    assert status == 0
    m = runtime_py.load(artifact)
    want = m.features(m.tokenizer.encode(text), k=k)
    assert [[(p["indices"], p["values"]) for p in s["positions"]] for s in out["saes"]] == \
        [[(p["indices"], p["values"]) for p in s["positions"]] for s in want]


@pytest.fixture(scope="session")
def cli():
    """run_cli: the CLI in this process (for fixtures, which cannot use capsys)."""
    return run_cli


def _real_export(real_model, tmp_path_factory, recipe: str) -> Path:
    """`gemma-export --target onnx --quant RECIPE --no-validate` on the bundled model: the CLI end to end
    (in this process, so the model is not read again), once for all workers."""
    def export(out: Path) -> Path:
        status, summary = run_cli(["--target", "onnx", "--quant", recipe, "--out", str(out), "--no-validate"])
        assert status == 0 and summary["artifact"] == str(out) and summary["source"] == str(real_model.source)
        return out
    return built_once(tmp_path_factory, f"gemma3-270m-onnx-{recipe}", export)


@pytest.fixture(scope="session")
def real_onnx(real_model, tmp_path_factory) -> Path:
    """The bundled model's fp32 ONNX artifact, exported once."""
    return _real_export(real_model, tmp_path_factory, "fp32")


@pytest.fixture(scope="session")
def real_onnx_int4(real_model, tmp_path_factory) -> Path:
    """The bundled model's int4 ONNX artifact, exported once."""
    return _real_export(real_model, tmp_path_factory, "int4")


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory):
    """tiny_vision(arch, old_layout) -> (transformers model, our LoadedModel): built once per session (shared: run them, never change them)."""
    import vision_oracle as vo
    from export.models.checkpoints import load_model
    root, built, refs = tmp_path_factory.mktemp("vision"), {}, {}

    def get(arch: str, old_layout: bool = False):
        if arch not in refs:
            refs[arch] = vo.build(arch)
        if (arch, old_layout) not in built:
            path = vo.save_folder(refs[arch], root / f"{arch}-{'old' if old_layout else 'new'}", old_layout)
            built[arch, old_layout] = load_model(path)
        return refs[arch], built[arch, old_layout]
    return get


# --- Ray ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (its start costs seconds on 2 cores): 2 CPUs, 4 GiB of schedulable memory,
    the smallest object store; `gemma-export sweep` uses a Ray this process already runs."""
    import ray
    ray.init(num_cpus=2, _memory=4 << 30, object_store_memory=80 << 20, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


# --- a phone: the stand-in adb (tests/fake_adb.py) -----------------------------------------------------

PHONE_FIXTURES = Path(__file__).parent / "fixtures" / "devices"


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """A PATH with the stand-in adb (phone serial R5CW71ABCDE, runner outputs from PHONE_FIXTURES); returns a
    function reading the commands it received."""
    import os
    import stat
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f"#!{sys.executable}\n" + (Path(__file__).parent / "fake_adb.py").read_text())
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_FIXTURES", str(PHONE_FIXTURES))
    monkeypatch.setenv("FAKE_ADB_SERIAL", "R5CW71ABCDE")
    return lambda: [["adb", *json.loads(line)] for line in log.read_text().splitlines()]


def printed(fixture: str, kind: str) -> float:
    """The speed a runner output in PHONE_FIXTURES prints for `kind` (Prefill / Decode)."""
    import re
    return float(re.search(rf"{kind} Speed: ([\d.]+)", (PHONE_FIXTURES / fixture).read_text())[1])
