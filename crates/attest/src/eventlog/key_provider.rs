//! The `key-provider` event's payload (upstream `KeyProviderInfo`): compact
//! JSON `{"name":..,"id":<hex>}` naming what produced the app's keys. It is
//! measured into RTMR3 and served as `Info.key_provider_info`, and verifiers
//! and KMS policies compare it byte for byte, so it is wire format. Every
//! component that measures a boot (the guest, `dstack simulator`) takes it
//! from here.

/// The `none` provider: keys from a fresh random seed each boot, so no
/// verifier can take them for provided keys.
pub const NONE: &str = r#"{"name":"none","id":""}"#;

/// The local (SGX) provider: its enclave's MRENCLAVE as the id.
pub fn local_sgx(mr_enclave: &[u8]) -> String {
    format!(
        r#"{{"name":"local-sgx","id":"{}"}}"#,
        hex::encode(mr_enclave)
    )
}

/// A KMS: its root CA's SubjectPublicKeyInfo (DER) as the id.
pub fn kms(root_spki: &[u8]) -> String {
    format!(r#"{{"name":"kms","id":"{}"}}"#, hex::encode(root_spki))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's compact serde form of `KeyProviderInfo { name, id }`.
    #[test]
    fn payloads_are_upstreams_compact_json() {
        assert_eq!(NONE, r#"{"name":"none","id":""}"#);
        assert_eq!(kms(&[0x30, 0x59]), r#"{"name":"kms","id":"3059"}"#);
        assert_eq!(
            local_sgx(&[0xab; 32]),
            format!(r#"{{"name":"local-sgx","id":"{}"}}"#, "ab".repeat(32))
        );
        for payload in [NONE.to_owned(), kms(&[1, 2]), local_sgx(&[3])] {
            let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
            assert_eq!(value.as_object().unwrap().len(), 2, "{payload}");
        }
    }
}
