"""Drives the official dstack Python SDK (dstack-sdk 0.5.4, unmodified)
against the guest API on /var/run/dstack.sock and checks every result.

Prints one `PASS <check>` or `FAIL <check>: <why>` line per check, then
`SUMMARY python-sdk: <n> passed, <m> failed`. It also prints the last quote
and GetQuote response as `ARTIFACT <name> <i>/<n> <base64>` chunks (log lines
are kept short) so a verifier outside the CVM can check them.
"""

import base64
import hashlib
import json
import sys
import traceback

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dstack_sdk import DstackClient
from eth_keys import keys
from eth_utils import keccak

RUNTIME_EVENT_TYPE = 0x08000001
RA_TLS_ATTESTATION_OID = "1.3.6.1.4.1.62397.1.8"
CHUNK = 3000

results = []


def check(name, ok, why=""):
    results.append((name, bool(ok)))
    if ok:
        print(f"PASS {name}", flush=True)
    else:
        print(f"FAIL {name}: {why}", flush=True)


def run(name, fn):
    """Runs a group of checks; an exception fails the group with its message."""
    try:
        fn()
    except Exception as exc:  # the driver reports, never stops early
        check(name, False, f"{type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stdout)


def artifact(name, data: bytes):
    text = base64.b64encode(data).decode()
    chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    for i, chunk in enumerate(chunks):
        print(f"ARTIFACT {name} {i + 1}/{len(chunks)} {chunk}", flush=True)


def is_hex(s, n=None):
    try:
        bytes.fromhex(s)
    except (ValueError, TypeError):
        return False
    return n is None or len(s) == n


def quote_fields(quote: bytes):
    """RTMRs and report_data of a TDX v4 quote (48-byte header, TD report body)."""
    body = 48
    rtmr0 = body + 16 + 48 + 48 + 8 + 8 + 8 + 48 + 48 + 48 + 48
    rtmrs = [quote[rtmr0 + 48 * i : rtmr0 + 48 * (i + 1)].hex() for i in range(4)]
    report_data = quote[rtmr0 + 192 : rtmr0 + 256]
    return rtmrs, report_data


def runtime_digest(event_type, name, payload: bytes):
    return hashlib.sha384(
        event_type.to_bytes(4, "little") + b":" + name.encode() + b":" + payload
    ).digest()


def replay_rtmr3(events):
    """Replays RTMR3 from the event log, recomputing each runtime event's digest."""
    mr = b"\0" * 48
    for ev in events:
        if ev["imr"] != 3:
            continue
        payload = bytes.fromhex(ev.get("event_payload", ""))
        digest = runtime_digest(ev["event_type"], ev["event"], payload)
        served = ev.get("digest", "")
        if served and bytes.fromhex(served) != digest:
            raise AssertionError(f"event {ev['event']}: digest {served} != recomputed {digest.hex()}")
        mr = hashlib.sha384(mr + digest).digest()
    return mr.hex()


def key_pubkey_hex(key: bytes, algorithm):
    if algorithm == "ed25519":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        pub = Ed25519PrivateKey.from_private_bytes(key).public_key()
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    return keys.PrivateKey(key).public_key.to_compressed_bytes().hex()


def recover_signer(sig: bytes, message: bytes):
    signature = keys.Signature(signature_bytes=sig[:64] + bytes([sig[64] % 27 if sig[64] >= 27 else sig[64]]))
    return signature.recover_public_key_from_msg_hash(keccak(message))


client = DstackClient()
state = {}


def t_info():
    info = client.info()
    check("info.app_id", is_hex(info.app_id, 40), info.app_id)
    check("info.instance_id", is_hex(info.instance_id) and len(info.instance_id) in (0, 40), info.instance_id)
    check("info.compose_hash", is_hex(info.compose_hash, 64), info.compose_hash)
    tcb = info.tcb_info
    check(
        "info.tcb_info.rtmrs",
        all(is_hex(getattr(tcb, f), 96) for f in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")),
        str(tcb),
    )
    check(
        "info.compose_hash_is_sha256_of_app_compose",
        hashlib.sha256(tcb.app_compose.encode()).hexdigest() == info.compose_hash,
        f"sha256(app_compose)={hashlib.sha256(tcb.app_compose.encode()).hexdigest()}",
    )
    check("info.event_log", len(tcb.event_log) > 0, "empty event log")
    names = [e.event for e in tcb.event_log if e.imr == 3]
    check(
        "info.boot_events",
        "compose-hash" in names and "app-id" in names and names.index("compose-hash") > names.index("app-id"),
        f"runtime events: {names}",
    )
    state["app_id"] = info.app_id


def t_get_key():
    a1 = client.get_key("driver/a", "test")
    a2 = client.get_key("driver/a", "test")
    b = client.get_key("driver/b", "test")
    check("get_key.32_bytes", len(a1.decode_key()) == 32, a1.key)
    check("get_key.same_path_same_key", a1.key == a2.key, f"{a1.key} != {a2.key}")
    check("get_key.other_path_other_key", a1.key != b.key, "same key for driver/a and driver/b")
    k256 = client.get_key("driver/a", "test", "k256")
    check("get_key.k256_alias", k256.key == a1.key, f"{k256.key} != {a1.key}")
    signers = []
    for path, resp in (("driver/a", a1), ("driver/b", b)):
        chain = resp.decode_signature_chain()
        check(f"get_key.chain0_65_bytes[{path}]", len(chain) >= 1 and len(chain[0]) == 65, resp.signature_chain)
        pub_hex = key_pubkey_hex(resp.decode_key(), "secp256k1")
        signer = recover_signer(chain[0], f"test:{pub_hex}".encode())
        signers.append(signer)
    check(
        "get_key.chain_recovers_to_one_app_key",
        signers[0] == signers[1],
        f"{signers[0].to_hex()} != {signers[1].to_hex()}",
    )
    ed = client.get_key("driver/a", "test", "ed25519")
    check("get_key.ed25519_32_bytes", len(ed.decode_key()) == 32, ed.key)
    ed_chain = ed.decode_signature_chain()
    ed_signer = recover_signer(ed_chain[0], f"test:{key_pubkey_hex(ed.decode_key(), 'ed25519')}".encode())
    check("get_key.ed25519_chain_recovers_to_app_key", ed_signer == signers[0], ed_signer.to_hex())
    state["app_signer"] = signers[0]


def t_get_quote():
    report_data = b"python-sdk-driver" + bytes(range(16))
    resp = client.get_quote(report_data)
    quote = resp.decode_quote()
    rtmrs, rd = quote_fields(quote)
    check("get_quote.report_data", rd == report_data.ljust(64, b"\0"), rd.hex())
    check("get_quote.response_report_data", resp.report_data == report_data.ljust(64, b"\0").hex(), resp.report_data)
    events = json.loads(resp.event_log)
    check("get_quote.event_log_replays_rtmr3", replay_rtmr3(events) == rtmrs[3], f"quote rtmr3 {rtmrs[3]}")
    sdk_replay = resp.replay_rtmrs()
    check(
        "get_quote.sdk_replay_rtmrs_match_quote",
        all(sdk_replay[i] == rtmrs[i] for i in range(4)),
        f"sdk {sdk_replay} quote {rtmrs}",
    )


def t_tls_key():
    for ra_tls in (False, True):
        tag = "ra_tls" if ra_tls else "plain"
        resp = client.get_tls_key(subject="driver.example", alt_names=["driver.example"], usage_ra_tls=ra_tls)
        key = serialization.load_pem_private_key(resp.key.encode(), password=None)
        check(f"get_tls_key.{tag}.pem_key", isinstance(key, ec.EllipticCurvePrivateKey) and resp.key.startswith("-----BEGIN PRIVATE KEY-----"), resp.key[:40])
        chain = [x509.load_pem_x509_certificate(c.encode()) for c in resp.certificate_chain]
        check(f"get_tls_key.{tag}.chain_len", len(chain) >= 2, f"{len(chain)} certificates")
        leaf = chain[0]
        same_key = leaf.public_key().public_numbers() == key.public_key().public_numbers()
        check(f"get_tls_key.{tag}.leaf_is_key", same_key, "leaf public key differs from the returned key")
        try:
            leaf.verify_directly_issued_by(chain[1])
            signed = True
            why = ""
        except Exception as exc:
            signed, why = False, str(exc)
        check(f"get_tls_key.{tag}.leaf_signed_by_chain1", signed, why)
        oids = {e.oid.dotted_string: e for e in leaf.extensions}
        if ra_tls:
            check("get_tls_key.ra_tls.quote_extension", RA_TLS_ATTESTATION_OID in oids, f"extensions: {sorted(oids)}")
            if RA_TLS_ATTESTATION_OID in oids:
                der = oids[RA_TLS_ATTESTATION_OID].value.value
                # An OCTET STRING wrapping a V0 attestation that holds the quote.
                quote = attestation_quote(der_octets(der))
                _, rd = quote_fields(quote)
                spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                want = hashlib.sha512(b"ratls-cert:" + spki).digest()
                check("get_tls_key.ra_tls.quote_binds_leaf_key", rd == want, rd.hex())
        else:
            check("get_tls_key.plain.no_quote_extension", RA_TLS_ATTESTATION_OID not in oids, "attestation extension without usage_ra_tls")
    k1 = client.get_tls_key().key
    k2 = client.get_tls_key().key
    check("get_tls_key.fresh_key_each_call", k1 != k2, "two calls returned the same key")


def attestation_quote(att: bytes) -> bytes:
    """The quote of a V0 VersionedAttestation (SCALE: 0x00 0x00, compact length, quote)."""
    if att[:2] != b"\x00\x00":
        raise ValueError(f"not a V0 TDX attestation: {att[:2].hex()}")
    mode = att[2] & 3
    if mode == 0:
        n, start = att[2] >> 2, 3
    elif mode == 1:
        n, start = int.from_bytes(att[2:4], "little") >> 2, 4
    elif mode == 2:
        n, start = int.from_bytes(att[2:6], "little") >> 2, 6
    else:
        raise ValueError("quote longer than 2^30 bytes")
    return att[start : start + n]


def der_octets(der: bytes) -> bytes:
    if der[0] != 0x04:
        raise ValueError(f"extension is not an OCTET STRING (tag {der[0]:#x})")
    n = der[1]
    if n < 0x80:
        return der[2 : 2 + n]
    width = n & 0x7F
    length = int.from_bytes(der[2 : 2 + width], "big")
    return der[2 + width : 2 + width + length]


def t_sign_verify():
    data = b"dstack-rs python driver"
    digest = hashlib.sha256(data).digest()
    for algorithm, payload in (("ed25519", data), ("secp256k1", data), ("secp256k1_prehashed", digest)):
        resp = client.sign(algorithm, payload)
        sig = resp.decode_signature()
        pub = resp.decode_public_key()
        ok = client.verify(algorithm, payload, sig, pub).valid
        check(f"sign_verify.{algorithm}.valid", ok is True, f"valid={ok}")
        tampered = bytes([payload[0] ^ 1]) + payload[1:]
        bad = client.verify(algorithm, tampered, sig, pub).valid
        check(f"sign_verify.{algorithm}.tampered_data_rejected", bad is False, f"valid={bad}")
        bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
        bad2 = client.verify(algorithm, payload, bad_sig, pub).valid
        check(f"sign_verify.{algorithm}.tampered_signature_rejected", bad2 is False, f"valid={bad2}")
        chain = resp.decode_signature_chain()
        check(f"sign_verify.{algorithm}.chain", len(chain) == 3 and chain[0] == sig, f"{len(chain)} entries")
        if "app_signer" in state and len(chain) == 3:
            pub_hex = pub.hex()
            if algorithm != "ed25519" and len(pub) == 65:
                pub_hex = keys.PublicKey(pub[1:]).to_compressed_bytes().hex()
            signer = recover_signer(chain[1], f"signing:{pub_hex}".encode())
            check(f"sign_verify.{algorithm}.key_signed_by_app_key", signer == state["app_signer"], signer.to_hex())
    try:
        client.sign("secp256k1_prehashed", b"short")
        check("sign_verify.prehashed_needs_32_bytes", False, "no error for 5 bytes")
    except Exception as exc:
        check("sign_verify.prehashed_needs_32_bytes", "32" in str(exc), str(exc))


def t_emit_event():
    payload = b"python-sdk-driver-payload"
    client.emit_event("python-sdk-driver", payload)
    resp = client.get_quote(b"after-emit")
    rtmrs, _ = quote_fields(resp.decode_quote())
    events = json.loads(resp.event_log)
    last = events[-1]
    check(
        "emit_event.last_in_log",
        last["imr"] == 3 and last["event"] == "python-sdk-driver" and bytes.fromhex(last["event_payload"]) == payload,
        json.dumps(last),
    )
    check("emit_event.replay_matches_rtmr3", replay_rtmr3(events) == rtmrs[3], rtmrs[3])
    artifact("quote.bin", resp.decode_quote())
    artifact("get_quote.json", json.dumps(resp.model_dump()).encode())


run("info", t_info)
run("get_key", t_get_key)
run("get_quote", t_get_quote)
run("get_tls_key", t_tls_key)
run("sign_verify", t_sign_verify)
run("emit_event", t_emit_event)

failed = sum(1 for _, ok in results if not ok)
print(f"SUMMARY python-sdk: {len(results) - failed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
