"""Bad requests to the guest API (raw HTTP over /var/run/dstack.sock): each
must get a 4xx with a JSON `error` naming the problem, and the API must keep
serving afterwards. Same PASS/FAIL/SUMMARY output as driver.py."""

import os
import sys

import httpx

SOCKET = os.environ.get("DSTACK_SIMULATOR_ENDPOINT", "/var/run/dstack.sock")
client = httpx.Client(transport=httpx.HTTPTransport(uds=SOCKET), base_url="http://localhost", timeout=10)
results = []


def check(name, ok, why=""):
    results.append(bool(ok))
    print(f"PASS {name}" if ok else f"FAIL {name}: {why}", flush=True)


def bad(name, path, body, words, content_type="application/json"):
    r = client.post(path, content=body, headers={"Content-Type": content_type})
    try:
        error = r.json().get("error", "")
    except ValueError:
        error = ""
    ok = 400 <= r.status_code < 500 and error and any(w in error.lower() for w in words)
    check(f"negative.{name}", ok, f"HTTP {r.status_code}: {r.text[:200]}")


bad("oversized_report_data", "/GetQuote", '{"report_data": "%s"}' % ("ab" * 65), ["64"])
bad("malformed_json", "/GetKey", '{"path": "x", ', ["json", "parse", "invalid", "eof", "expected"])
bad("unknown_algorithm", "/GetKey", '{"path": "x", "algorithm": "rsa"}', ["algorithm"])
bad("unknown_sign_algorithm", "/Sign", '{"algorithm": "rsa", "data": "00"}', ["algorithm"])
bad("non_hex_bytes", "/GetQuote", '{"report_data": "zz"}', ["hex", "invalid", "character"])
r = client.post("/NoSuchMethod", json={})
check("negative.unknown_path", 400 <= r.status_code < 500, f"HTTP {r.status_code}: {r.text[:200]}")
for i in range(3):
    r = client.post("/Info", json={})
    check(f"negative.still_serving[{i}]", r.status_code == 200 and "app_id" in r.json(), f"HTTP {r.status_code}")

failed = results.count(False)
print(f"SUMMARY python-negative: {len(results) - failed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
