"""Runs the three parts one after another, whatever each one's outcome:
driver.py (every SDK call, checked), negative.py (bad requests refused) and
run_sdk_tests.py (the SDK's own pytest suite). Exits non-zero if any failed."""

import subprocess
import sys

codes = []
for script in ("driver.py", "negative.py", "run_sdk_tests.py"):
    print(f"RUN {script}", flush=True)
    codes.append(subprocess.run([sys.executable, f"/app/{script}"]).returncode)
print(f"ALL-DONE exit codes {codes}", flush=True)
sys.exit(1 if any(codes) else 0)
