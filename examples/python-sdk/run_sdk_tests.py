"""Runs the dstack Python SDK's own test suite (from the dstack-sdk 0.5.4
sdist, unmodified, unpacked at /opt/sdk-tests) against the guest API with
pytest, one `tests/...::name PASSED|FAILED|SKIPPED` line per test, then
`SUMMARY sdk-tests: ...`."""

import glob
import os
import sys

import pytest

root = glob.glob("/opt/sdk-tests/dstack_sdk-*")[0]
os.chdir(root)
code = pytest.main(["-v", "-rfE", "-p", "no:cacheprovider", "--color=no", "--tb=short", "tests"])
print(f"SUMMARY sdk-tests: pytest exit code {int(code)}", flush=True)
sys.exit(int(code))
