// Drives the official dstack JS SDK (@phala/dstack-sdk, unmodified) against
// the guest API on /var/run/dstack.sock and checks every result. Prints one
// `PASS <check>` or `FAIL <check>: <why>` line per check, then
// `SUMMARY js-sdk: <n> passed, <m> failed`.
import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { DstackClient } from "@phala/dstack-sdk";
import { secp256k1 } from "@noble/curves/secp256k1";
import { ed25519 } from "@noble/curves/ed25519";
import { keccak_256 } from "@noble/hashes/sha3";

const RUNTIME_EVENT_TYPE = 0x08000001;
// DER of OID 1.3.6.1.4.1.62397.1.8 (RA-TLS attestation extension: a V0
// VersionedAttestation, whose quote follows the two kind bytes).
const RA_TLS_ATTESTATION_OID = Buffer.from("060a2b0601040183e73d0108", "hex");

const results = [];
function check(name, ok, why = "") {
  results.push(Boolean(ok));
  console.log(ok ? `PASS ${name}` : `FAIL ${name}: ${why}`);
}
async function run(name, fn) {
  try {
    await fn();
  } catch (e) {
    check(name, false, `${e?.name}: ${e?.message}`);
    console.log(e?.stack);
  }
}
const hex = (b) => Buffer.from(b).toString("hex");
const isHex = (s, n) => typeof s === "string" && /^[0-9a-f]*$/.test(s) && (n === undefined || s.length === n);

function quoteFields(quote) {
  const rtmr0 = 48 + 16 + 48 + 48 + 8 + 8 + 8 + 48 + 48 + 48 + 48;
  const rtmrs = [0, 1, 2, 3].map((i) => hex(quote.subarray(rtmr0 + 48 * i, rtmr0 + 48 * (i + 1))));
  return { rtmrs, reportData: quote.subarray(rtmr0 + 192, rtmr0 + 256) };
}

function runtimeDigest(type, name, payload) {
  const t = Buffer.alloc(4);
  t.writeUInt32LE(type);
  return createHash("sha384").update(Buffer.concat([t, Buffer.from(`:${name}:`), payload])).digest();
}

function replayRtmr3(events) {
  let mr = Buffer.alloc(48);
  for (const ev of events) {
    if (ev.imr !== 3) continue;
    const digest = runtimeDigest(ev.event_type, ev.event, Buffer.from(ev.event_payload || "", "hex"));
    if (ev.digest && ev.digest !== hex(digest)) {
      throw new Error(`event ${ev.event}: digest ${ev.digest} != recomputed ${hex(digest)}`);
    }
    mr = createHash("sha384").update(Buffer.concat([mr, digest])).digest();
  }
  return hex(mr);
}

function recoverSigner(sig, message) {
  const v = sig[64] >= 27 ? sig[64] - 27 : sig[64];
  const s = secp256k1.Signature.fromCompact(sig.subarray(0, 64)).addRecoveryBit(v);
  return s.recoverPublicKey(keccak_256(Buffer.from(message))).toHex(true);
}

// DER: the value of the TLV at `at`, and where the next TLV starts.
function tlv(buf, at) {
  let len = buf[at + 1];
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i];
    start += n;
  }
  return { tag: buf[at], value: buf.subarray(start, start + len), next: start + len };
}

function raTlsQuote(certDer) {
  const at = certDer.indexOf(RA_TLS_ATTESTATION_OID);
  if (at < 0) return null;
  let t = tlv(certDer, at + RA_TLS_ATTESTATION_OID.length);
  if (t.tag === 0x01) t = tlv(certDer, t.next); // critical flag
  const att = tlv(t.value, 0).value; // extnValue wraps an OCTET STRING
  if (att[0] !== 0 || att[1] !== 0) throw new Error("not a V0 TDX attestation");
  // SCALE compact length of the quote, then the quote.
  const mode = att[2] & 3;
  let len, start;
  if (mode === 0) [len, start] = [att[2] >> 2, 3];
  else if (mode === 1) [len, start] = [att.readUInt16LE(2) >> 2, 4];
  else if (mode === 2) [len, start] = [att.readUInt32LE(2) >>> 2, 6];
  else throw new Error("quote longer than 2^30 bytes");
  return att.subarray(start, start + len);
}

const client = new DstackClient();
const state = {};

await run("info", async () => {
  const info = await client.info();
  check("info.app_id", isHex(info.app_id, 40), info.app_id);
  check("info.compose_hash", isHex(info.compose_hash, 64), info.compose_hash);
  const tcb = info.tcb_info;
  check("info.tcb_info.rtmrs", ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"].every((f) => isHex(tcb[f], 96)), JSON.stringify(tcb).slice(0, 200));
  const h = createHash("sha256").update(tcb.app_compose).digest("hex");
  check("info.compose_hash_is_sha256_of_app_compose", h === info.compose_hash, h);
  check("info.event_log", Array.isArray(tcb.event_log) && tcb.event_log.length > 0, "empty");
});

await run("get_key", async () => {
  const a1 = await client.getKey("driver/a", "test");
  const a2 = await client.getKey("driver/a", "test");
  const b = await client.getKey("driver/b", "test");
  check("get_key.32_bytes", a1.key.length === 32, hex(a1.key));
  check("get_key.same_path_same_key", hex(a1.key) === hex(a2.key), `${hex(a1.key)} != ${hex(a2.key)}`);
  check("get_key.other_path_other_key", hex(a1.key) !== hex(b.key), "same key");
  const k256 = await client.getKey("driver/a", "test", "k256");
  check("get_key.k256_alias", hex(k256.key) === hex(a1.key), hex(k256.key));
  const signers = [a1, b].map((r) =>
    recoverSigner(Buffer.from(r.signature_chain[0]), `test:${hex(secp256k1.getPublicKey(r.key, true))}`),
  );
  check("get_key.chain_recovers_to_one_app_key", signers[0] === signers[1], `${signers[0]} != ${signers[1]}`);
  const ed = await client.getKey("driver/a", "test", "ed25519");
  check("get_key.ed25519_32_bytes", ed.key.length === 32, hex(ed.key));
  const edSigner = recoverSigner(Buffer.from(ed.signature_chain[0]), `test:${hex(ed25519.getPublicKey(ed.key))}`);
  check("get_key.ed25519_chain_recovers_to_app_key", edSigner === signers[0], edSigner);
  let rejected = false;
  try {
    await client.getKey("driver/a", "test", "secp256k1_prehashed");
  } catch {
    rejected = true;
  }
  check("get_key.rejects_prehashed_algorithm", rejected, "accepted");
  state.appSigner = signers[0];
});

await run("get_quote", async () => {
  const reportData = Buffer.concat([Buffer.from("js-sdk-driver"), Buffer.from([1, 2, 3, 4])]);
  const resp = await client.getQuote(reportData);
  const { rtmrs, reportData: rd } = quoteFields(Buffer.from(resp.quote, "hex"));
  const want = Buffer.concat([reportData, Buffer.alloc(64 - reportData.length)]);
  check("get_quote.report_data", rd.equals(want), hex(rd));
  const events = JSON.parse(resp.event_log);
  check("get_quote.event_log_replays_rtmr3", replayRtmr3(events) === rtmrs[3], rtmrs[3]);
  const sdk = resp.replayRtmrs();
  check("get_quote.sdk_replay_rtmrs_match_quote", [0, 1, 2, 3].every((i) => sdk[i] === rtmrs[i]), `${sdk} vs ${rtmrs}`);
  let threw = false;
  try {
    await client.getQuote(Buffer.alloc(65));
  } catch {
    threw = true;
  }
  check("get_quote.over_64_bytes_rejected", threw, "no error");
});

await run("get_tls_key", async () => {
  for (const raTls of [false, true]) {
    const tag = raTls ? "ra_tls" : "plain";
    const resp = await client.getTlsKey({ subject: "driver.example", altNames: ["driver.example"], usageRaTls: raTls });
    const key = createPrivateKey(resp.key);
    check(`get_tls_key.${tag}.pem_key`, resp.key.startsWith("-----BEGIN PRIVATE KEY-----") && key.asymmetricKeyType === "ec", resp.key.slice(0, 40));
    const chain = resp.certificate_chain.map((p) => new X509Certificate(p));
    check(`get_tls_key.${tag}.chain_len`, chain.length >= 2, `${chain.length}`);
    check(`get_tls_key.${tag}.leaf_is_key`, chain[0].checkPrivateKey(key), "leaf does not match key");
    check(`get_tls_key.${tag}.leaf_signed_by_chain1`, chain.length >= 2 && chain[0].verify(chain[1].publicKey), "signature check failed");
    const quote = raTlsQuote(chain[0].raw);
    if (raTls) {
      check("get_tls_key.ra_tls.quote_extension", quote !== null, "no 1.3.6.1.4.1.62397.1.8 extension");
      if (quote) {
        const spki = chain[0].publicKey.export({ type: "spki", format: "der" });
        const want = createHash("sha512").update(Buffer.concat([Buffer.from("ratls-cert:"), spki])).digest();
        check("get_tls_key.ra_tls.quote_binds_leaf_key", quoteFields(quote).reportData.equals(want), hex(quoteFields(quote).reportData));
      }
    } else {
      check("get_tls_key.plain.no_quote_extension", quote === null, "quote extension present");
    }
  }
});

await run("sign_verify", async () => {
  const data = Buffer.from("dstack-rs js driver");
  const digest = createHash("sha256").update(data).digest();
  for (const [alg, payload] of [["ed25519", data], ["secp256k1", data], ["secp256k1_prehashed", digest]]) {
    const r = await client.sign(alg, payload);
    const ok = await client.verify(alg, payload, r.signature, r.public_key);
    check(`sign_verify.${alg}.valid`, ok.valid === true, JSON.stringify(ok));
    const tampered = Buffer.from(payload);
    tampered[0] ^= 1;
    const bad = await client.verify(alg, tampered, r.signature, r.public_key);
    check(`sign_verify.${alg}.tampered_data_rejected`, bad.valid === false, JSON.stringify(bad));
    const badSig = Buffer.from(r.signature);
    badSig[0] ^= 1;
    const bad2 = await client.verify(alg, payload, badSig, r.public_key);
    check(`sign_verify.${alg}.tampered_signature_rejected`, bad2.valid === false, JSON.stringify(bad2));
    check(`sign_verify.${alg}.chain`, r.signature_chain.length === 3 && hex(r.signature_chain[0]) === hex(r.signature), `${r.signature_chain.length}`);
    if (state.appSigner && r.signature_chain.length === 3) {
      let pub = hex(r.public_key);
      if (alg !== "ed25519" && r.public_key.length === 65) pub = secp256k1.ProjectivePoint.fromHex(pub).toHex(true);
      const signer = recoverSigner(Buffer.from(r.signature_chain[1]), `signing:${pub}`);
      check(`sign_verify.${alg}.key_signed_by_app_key`, signer === state.appSigner, signer);
    }
  }
});

await run("emit_event", async () => {
  const payload = Buffer.from("js-sdk-driver-payload");
  await client.emitEvent("js-sdk-driver", payload);
  const resp = await client.getQuote(Buffer.from("after-emit"));
  const { rtmrs } = quoteFields(Buffer.from(resp.quote, "hex"));
  const events = JSON.parse(resp.event_log);
  const last = events[events.length - 1];
  check(
    "emit_event.last_in_log",
    last.imr === 3 && last.event_type === RUNTIME_EVENT_TYPE && last.event === "js-sdk-driver" && last.event_payload === hex(payload),
    JSON.stringify(last),
  );
  check("emit_event.replay_matches_rtmr3", replayRtmr3(events) === rtmrs[3], rtmrs[3]);
});

const failed = results.filter((ok) => !ok).length;
console.log(`SUMMARY js-sdk: ${results.length - failed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
