#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the pinned dependencies and installs gemma-export into it.
#   bash setup.sh          runtime + export dependencies
#   bash setup.sh --test   also the test-only ones (transformers is the parity oracle) and llama.cpp's
#                          converter (tests/llama_cpp_converter.py: pip downloads its pinned sdist)
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
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
