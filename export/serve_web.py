"""`gemma-export serve-web ARTIFACT [--port N]`: the example chat page (tools/web/chat/) over a `--target web` folder,
served from 127.0.0.1 with every file it needs, so a developer tries the artifact in a browser in one command:

- `/` and `/chat/...`: the page (plain HTML + JS, transformers.js);
- `/models/<name>/...`: the folder (transformers.js's localModelPath is `/models/`);
- `/transformers/...`: @huggingface/transformers' dist/ (its browser bundle), `/ort/...`: onnxruntime-web's dist/
  (the wasm files that bundle loads; by default it would fetch them from a CDN), both from tools/web/node_modules;
- `/serve-web.json`: the model's name and dtype, which the page reads.
Every response carries Cross-Origin-Opener-Policy / Cross-Origin-Embedder-Policy (wasm threads need a cross-origin
isolated page) and no-store (a re-exported folder is never served stale)."""
from __future__ import annotations

import functools
import json
import mimetypes
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runtime_py.files import read_json

from .converters.onnx.web_folder import WEB_LAYOUT

WEB = Path(__file__).resolve().parents[1] / "tools" / "web"
CHAT = WEB / "chat"
MODULES = WEB / "node_modules"
LIBRARIES = {"/transformers/": MODULES / "@huggingface" / "transformers" / "dist",
             "/ort/": MODULES / "onnxruntime-web" / "dist"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}


def check_web_folder(artifact: str | Path) -> dict:
    """-> {"model", "dtype"} of a `--target web` causal LM folder; ValueError naming what is missing otherwise."""
    folder = Path(artifact)
    manifest, config = folder / "manifest.json", folder / "config.json"
    if not folder.is_dir() or not manifest.is_file() or not config.is_file():
        raise ValueError(f"{folder}: not a --target web folder (needs config.json and manifest.json; export one with "
                         f"`gemma-export --target web --out DIR`)")
    m, c = read_json(manifest), read_json(config)
    if m.get("layout") != WEB_LAYOUT or m.get("kind") != "causal_lm":
        raise ValueError(f"{manifest}: not a --target web causal LM (layout {m.get('layout')!r}, kind "
                         f"{m.get('kind')!r}); the chat page needs one")
    dtype = (c.get("transformers.js_config") or {}).get("dtype")
    if not dtype or not (folder / str(m.get("model_file", ""))).is_file():
        raise ValueError(f"{config}: no transformers.js_config.dtype or no graph {m.get('model_file')!r} beside it")
    return {"model": folder.resolve().name, "dtype": dtype}


def check_libraries() -> None:
    for prefix, path in LIBRARIES.items():
        if not path.is_dir():
            raise ValueError(f"{path}: missing (the page's {prefix} files); install them with "
                             f"`npm ci --ignore-scripts` in {WEB} (setup.sh --test does it)")


class Handler(SimpleHTTPRequestHandler):
    mounts: dict[str, Path] = {}          # URL prefix -> directory, longest first
    info: dict = {}

    def translate_path(self, path: str) -> str:
        url = unquote(urlsplit(path).path)
        if url in ("/", "/index.html"):
            return str(CHAT / "index.html")
        for prefix, root in self.mounts.items():
            if url.startswith(prefix):
                target = (root / url[len(prefix):]).resolve()
                if target == root or root in target.parents:
                    return str(target)
        return str(CHAT / "no-such-file")      # anything else: 404, nothing outside the mounts

    def do_GET(self):
        if urlsplit(self.path).path == "/serve-web.json":
            body = json.dumps(self.info).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def end_headers(self):
        for key, value in ISOLATION.items():
            self.send_header(key, value)
        super().end_headers()

    def log_message(self, format, *args):     # quiet: the URL is printed once
        pass


def make_server(artifact: str | Path, port: int = 8000) -> ThreadingHTTPServer:
    """The server (not yet serving) for `artifact` on 127.0.0.1:`port` (0: any free port); refuses a folder that is
    not a web causal LM, or missing JS files, before binding."""
    info = check_web_folder(artifact)
    check_libraries()
    mimetypes.add_type("text/javascript", ".mjs")
    mimetypes.add_type("application/wasm", ".wasm")
    mounts = {"/chat/": CHAT.resolve(), f"/models/{info['model']}/": Path(artifact).resolve(),
              **{k: v.resolve() for k, v in LIBRARIES.items()}}
    handler = type("WebHandler", (Handler,), {"mounts": dict(sorted(mounts.items(), key=lambda kv: -len(kv[0]))),
                                              "info": info})
    return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(CHAT)))


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def serve(artifact: str | Path, port: int = 8000) -> int:
    server = make_server(artifact, port)
    print(f"serving {Path(artifact)} at {url_of(server)}  (wasm; add ?device=webgpu for WebGPU; Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
