"""llama.cpp's own Hugging Face -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and its gguf-py),
the independent writer of the GGUF files some tests read. It ships inside llama-cpp-python's sdist
(vendor/llama.cpp/); the pinned sdist is fetched from PyPI by pip (hash-checked) and only the converter's files
are kept, in tests/cache/ (git-ignored). `bash setup.sh --test` fetches it (this file run as a script); a test
that needs it fetches it when it is missing. Standard library only: setup.sh runs it before anything else."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"            # llama-cpp-python; the benchmarks build the same release (bench/requirements.txt)
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ROOT = Path(__file__).parent / "cache" / f"llama.cpp-{VERSION}"
SCRIPT = ROOT / "convert_hf_to_gguf.py"
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def fetch() -> Path:
    """The converter script, fetched and extracted unless it already is."""
    if SCRIPT.is_file():
        return SCRIPT
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"llama-cpp-python=={VERSION} --hash=sha256:{SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--no-binary", ":all:", "--require-hashes", "-r", str(req), "-d", tmp],
                       check=True)
        staging = ROOT.with_name(ROOT.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(Path(tmp) / f"llama_cpp_python-{VERSION}.tar.gz") as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix):]
                if m.name.startswith(prefix) and rel.startswith(KEEP) and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            tar.extractall(staging, members, filter="data")
        staging.rename(ROOT)
    return SCRIPT


def convert(hf_folder: Path, out: Path, outtype: str, mmproj: bool = False) -> Path:
    """Run the converter on an HF folder (`--mmproj`: the vision tower and projector only)."""
    cmd = [sys.executable, str(fetch()), str(hf_folder), "--outtype", outtype, "--outfile", str(out)]
    done = subprocess.run(cmd + (["--mmproj"] if mmproj else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{done.stderr[-3000:]}")
    return out


if __name__ == "__main__":
    print(fetch())
