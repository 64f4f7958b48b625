#!/usr/bin/env python3
"""A stand-in `adb` for tests (copied onto PATH as `adb`): appends each command line (JSON) to
$FAKE_ADB_LOG, checks what it can (serial, pushed files exist, the runner was pushed before it runs, logs
pulled were written), and answers like a phone: runner invocations `CMD > LOG 2>&1` store the fixture for that
invocation (from $FAKE_ADB_FIXTURES: litert_lm_main_prefill{N}.log or benchmark_model_{signature}.log, or
$FAKE_ADB_OVERRIDE if set) as LOG; `pull LOG LOCAL` writes it back ($FAKE_ADB_HANG: a runner invocation hangs).
Unknown commands exit 1."""
import json
import os
import re
import shlex
import sys
from pathlib import Path

argv = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
state_path = Path(os.environ["FAKE_ADB_LOG"] + ".state.json")
state = json.loads(state_path.read_text()) if state_path.exists() else {"files": {}, "logs": {}}


def fail(msg):
    print(f"fake adb: {msg}", file=sys.stderr)
    sys.exit(1)


if argv[:1] == ["-s"]:
    if argv[1] != os.environ.get("FAKE_ADB_SERIAL"):
        fail(f"device '{argv[1]}' not found")
    argv = argv[2:]
elif os.environ.get("FAKE_ADB_SERIAL"):
    fail("more than one device/emulator")

cmd = argv[0] if argv else ""
if cmd == "push":
    local, remote = argv[1:]
    if not Path(local).is_file():
        fail(f"cannot stat '{local}': No such file or directory")
    state["files"][remote] = local
    print(f"{local}: 1 file pushed, 0 skipped.")
elif cmd == "pull":
    remote, local = argv[1:]
    if remote not in state["logs"]:
        fail(f"remote object '{remote}' does not exist")
    Path(local).write_text(state["logs"][remote])
    print(f"{remote}: 1 file pulled, 0 skipped.")
elif cmd == "shell" and len(argv) == 2:
    line = argv[1]
    if line == "getprop ro.product.model":
        print("Pixel 8")
    elif re.fullmatch(r"(mkdir -p|rm -rf) /data/local/tmp/gemma-export/run-\d+-[0-9a-f]+", line):
        pass
    elif line.startswith("chmod 755 "):
        if line.split()[-1] not in state["files"]:
            fail(f"chmod: {line.split()[-1]}: No such file or directory")
    elif m := re.fullmatch(r"(.+) > (\S+) 2>&1", line):
        if os.environ.get("FAKE_ADB_HANG"):          # a runner that never returns
            import time
            time.sleep(60)
        words = shlex.split(m[1])
        exe = next(w for w in words if w.startswith("/"))
        if exe not in state["files"]:
            fail(f"{exe}: inaccessible or not found")
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
        name = (f"litert_lm_main_prefill{flags['benchmark_prefill_tokens']}.log" if exe.endswith("litert_lm_main")
                else f"benchmark_model_{flags['signature_to_run_for']}.log")
        source = os.environ.get("FAKE_ADB_OVERRIDE") or str(Path(os.environ["FAKE_ADB_FIXTURES"]) / name)
        state["logs"][m[2]] = Path(source).read_text()
    else:
        fail(f"unexpected shell command: {line}")
else:
    fail(f"unexpected command: {argv}")
state_path.write_text(json.dumps(state))
