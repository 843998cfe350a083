"""Runs the official dstack Python SDK for crates/envcrypt's tests.

    driver.py version         the installed dstack-sdk version
    driver.py encrypt MODE    stdin {"public_key": hex, "env": [{"key", "value"}]};
                              prints encrypt_env_vars (MODE async) or
                              encrypt_env_vars_sync (MODE sync) output: hex
    driver.py verify          stdin {"public_key", "signature_v1", "signature",
                              "app_id": hex, "timestamp": int}; prints
                              {"v1": signer or null, "legacy": signer or null}
    driver.py decrypt         stdin {"secret": hex, "blob": hex}; prints the
                              plaintext, decrypted as the spec's Python example
                              does with `cryptography` (not an SDK function:
                              the SDKs only encrypt)

Inputs come on stdin so that values never show in a process list.
"""

import asyncio
import importlib.metadata
import json
import sys
import warnings

import dstack_sdk


def main() -> None:
    command = sys.argv[1]
    if command == "version":
        print(importlib.metadata.version("dstack-sdk"))
        return
    request = json.load(sys.stdin)
    if command == "encrypt":
        env = [dstack_sdk.EnvVar(key=v["key"], value=v["value"]) for v in request["env"]]
        if sys.argv[2] == "async":
            out = asyncio.run(dstack_sdk.encrypt_env_vars(env, request["public_key"]))
        else:
            out = dstack_sdk.encrypt_env_vars_sync(env, request["public_key"])
        print(out)
    elif command == "verify":
        public_key = bytes.fromhex(request["public_key"])
        v1 = dstack_sdk.verify_env_encrypt_public_key(
            public_key,
            bytes.fromhex(request["signature_v1"]),
            request["app_id"],
            request["timestamp"],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            legacy = dstack_sdk.verify_env_encrypt_public_key_legacy(
                public_key, bytes.fromhex(request["signature"]), request["app_id"]
            )
        print(json.dumps({"v1": v1, "legacy": legacy}))
    elif command == "decrypt":
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        blob = bytes.fromhex(request["blob"])
        secret = X25519PrivateKey.from_private_bytes(bytes.fromhex(request["secret"]))
        shared = secret.exchange(X25519PublicKey.from_public_bytes(blob[:32]))
        sys.stdout.write(AESGCM(shared).decrypt(blob[32:44], blob[44:], None).decode())
    else:
        sys.exit(f"unknown command {command}")


main()
