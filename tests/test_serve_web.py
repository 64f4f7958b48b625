"""`gemma-export serve-web`: the example chat page, the folder and the JS files on 127.0.0.1 with the headers a
cross-origin isolated page needs, checked with an HTTP client (the browser itself is driven elsewhere)."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

import export.serve_web as serve_web
from export.cli import main
from export.converters.onnx import export_onnx_web
from export.models.checkpoints import load_model


@pytest.fixture(scope="module")
def folder(tiny_hf, tmp_path_factory):
    hf = tiny_hf("gemma3", tokenizer=True)
    return export_onnx_web(load_model(hf.path), tmp_path_factory.mktemp("serve") / "gemma3-web", "fp32", 512)


@pytest.fixture
def server(folder):
    srv = serve_web.make_server(folder, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield serve_web.url_of(srv)
    srv.shutdown()
    srv.server_close()


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers, r.read()         # headers: case-insensitive


def test_page_folder_and_libraries_are_served_cross_origin_isolated(server, folder):
    status, headers, body = get(server)
    assert status == 200 and b"/chat/chat.js" in body and headers["Content-Type"].startswith("text/html")
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    _, headers, body = get(server + "chat/chat.js")
    assert headers["Content-Type"].startswith("text/javascript") and b"AutoModelForCausalLM" in body
    assert json.loads(get(server + "serve-web.json")[2]) == {"model": "gemma3-web", "dtype": "fp32"}
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx"):
        status, headers, body = get(f"{server}models/gemma3-web/{name}")
        assert status == 200 and body == (folder / name).read_bytes(), name
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    _, headers, body = get(server + "transformers/transformers.min.js")
    assert headers["Content-Type"].startswith("text/javascript") and len(body) > 100_000
    _, headers, body = get(server + "ort/ort-wasm-simd-threaded.jsep.wasm")
    assert headers["Content-Type"] == "application/wasm" and body[:4] == b"\0asm"


@pytest.mark.parametrize("path", ["models/gemma3-web/../../../../etc/passwd", "models/other/config.json",
                                  "chat/../../../pyproject.toml", "nothing"])
def test_nothing_outside_the_mounts(server, path):
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server + path)
    assert e.value.code == 404


def test_cli_prints_the_url(folder, monkeypatch, capsys):
    monkeypatch.setattr(serve_web.ThreadingHTTPServer, "serve_forever", lambda self: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    assert main(["serve-web", str(folder), "--port", "0"]) == 0
    assert "http://127.0.0.1:" in capsys.readouterr().out


def test_cli_refuses_what_is_not_a_web_causal_lm_or_missing_js(folder, tmp_path, monkeypatch, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["serve-web", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a --target web folder" in err
    monkeypatch.setitem(serve_web.LIBRARIES, "/ort/", tmp_path / "missing")
    assert main(["serve-web", str(folder), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "npm ci --ignore-scripts" in err
