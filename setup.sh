#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the pinned dependencies and installs gemma-export into it.
#   bash setup.sh          runtime + export dependencies
#   bash setup.sh --test   also the test-only ones (transformers is the parity oracle) and llama.cpp's
#                          converter (tests/llama_cpp_converter.py: pip downloads its pinned sdist), and
#                          transformers.js for the web target's tests (tools/web: npm ci, Node.js 20 from Debian),
#                          and the browser they drive: Debian's chromium (apt-get, if /usr/bin/chromium is missing)
# torch is installed first and alone, pinned to the CPU wheel on this machine's disk; installing
# it through another spec could pull a multi-GB CUDA build. Use pip (uv/poetry don't see that wheel).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0 2> >(grep -v "is ignored" >&2)
req=requirements.txt
[ "${1:-}" = "--test" ] && req=requirements-test.txt
"${PIP[@]}" -r "$req" 2> >(grep -v "is ignored" >&2)
"${PIP[@]}" --no-deps -e . 2> >(grep -v "is ignored" >&2)
# tests: llama.cpp's own HF -> GGUF converter, from llama-cpp-python's pinned sdist, into tests/cache/
[ "${1:-}" = "--test" ] && .venv/bin/python tests/llama_cpp_converter.py >/dev/null
# tests: transformers.js and onnxruntime-node (its bundled CPU binary; no install scripts run) from the lock file
if [ "${1:-}" = "--test" ]; then
    command -v npm >/dev/null || { echo "setup.sh --test: npm not found (Debian: apt-get install nodejs npm)" >&2; exit 1; }
    (cd tools/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi
# tests: headless Chromium from Debian's packages (puppeteer-core, from the lock file, drives it; it downloads no
# browser), with a font so that pages render text
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
    command -v apt-get >/dev/null || { echo "setup.sh --test: /usr/bin/chromium is missing and apt-get is not available: install Debian's chromium package" >&2; exit 1; }
    SUDO=(); [ "$(id -u)" = 0 ] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq >/dev/null
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
