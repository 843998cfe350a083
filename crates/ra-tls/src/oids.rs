//! Certificate extension OIDs. dstack's own (arc 1.3.6.1.4.1.62397.1) are used
//! for the contents dstack defines, so dstack's tools read our certificates;
//! the collateral extension is ours, under a UUID-derived OID (X.667, arc 2.25).

/// The raw TDX quote (dstack's legacy quote extension; read, no longer written).
pub const TDX_QUOTE: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 1];
/// The event log, a JSON array of dstack events (legacy; read, no longer written).
pub const EVENT_LOG: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 2];
/// The app id (raw bytes).
pub const APP_ID: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 3];
/// Special certificate usage, e.g. `app:custom`, `kms:rpc`.
pub const CERT_USAGE: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 4];
/// dstack's versioned attestation (`VersionedAttestation` bytes, stripped).
pub const ATTESTATION: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 8];
/// dstack's app info (msgpack `AppInfo`).
pub const APP_INFO: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 9];
/// Quote collateral (dcap-qvl QuoteCollateralV3 JSON), so a verifier can check
/// the quote offline. Its signatures chain to the root the verifier trusts, so
/// carrying it in-band grants nothing by itself.
/// Arc 2.25.<UUID 00000000-0000-0000-1e21-d5a7c0b8f3e4 as an integer>: a UUID
/// arc (X.667) small enough for the 63-bit components X.509 parsers accept.
pub const COLLATERAL: &[u64] = &[2, 25, 2171251411838890980, 1];
