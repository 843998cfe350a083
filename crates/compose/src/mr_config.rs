//! TDX `mr_config_id`: the 48 bytes the host sets at TD launch to bind an
//! app's identity into every quote (UPSTREAM.md §3.2, upstream
//! `dstack-types/src/mr_config.rs`).

use sha3::{Digest, Keccak256};

use crate::KeyProviderKind;

/// Length of `mr_config_id`.
pub const MR_CONFIG_ID_LEN: usize = 48;

/// Version 1: byte 0 is 1, then the compose-hash, then zeros.
pub fn mr_config_id_v1(compose_hash: &[u8; 32]) -> [u8; MR_CONFIG_ID_LEN] {
    let mut id = [0u8; MR_CONFIG_ID_LEN];
    id[0] = 1;
    id[1..33].copy_from_slice(compose_hash);
    id
}

/// Version 2: byte 0 is 2, then Keccak256(compose_hash ‖ app_id ‖ kind ‖
/// key_provider_id), then zeros.
pub fn mr_config_id_v2(
    compose_hash: &[u8; 32],
    app_id: &[u8],
    key_provider: KeyProviderKind,
    key_provider_id: &[u8],
) -> [u8; MR_CONFIG_ID_LEN] {
    let kind: u8 = match key_provider {
        KeyProviderKind::None => 0,
        KeyProviderKind::Local => 1,
        KeyProviderKind::Kms => 2,
        KeyProviderKind::Tpm => 3,
    };
    let digest = Keccak256::new()
        .chain_update(compose_hash)
        .chain_update(app_id)
        .chain_update([kind])
        .chain_update(key_provider_id)
        .finalize();
    let mut id = [0u8; MR_CONFIG_ID_LEN];
    id[0] = 2;
    id[1..33].copy_from_slice(&digest);
    id
}

/// Whether a TD's `mr_config_id` is consistent with the app it booted: all
/// zeros (the host bound nothing), or a v1/v2 value for this app.
pub fn mr_config_id_matches(
    mr_config_id: &[u8; MR_CONFIG_ID_LEN],
    compose_hash: &[u8; 32],
    app_id: &[u8],
    key_provider: KeyProviderKind,
    key_provider_id: &[u8],
) -> bool {
    match mr_config_id[0] {
        _ if mr_config_id.iter().all(|b| *b == 0) => true,
        1 => *mr_config_id == mr_config_id_v1(compose_hash),
        2 => *mr_config_id == mr_config_id_v2(compose_hash, app_id, key_provider, key_provider_id),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_bind_the_app() {
        let hash = [7u8; 32];
        let v1 = mr_config_id_v1(&hash);
        assert_eq!(v1[0], 1);
        assert_eq!(&v1[1..33], &hash);
        assert!(v1[33..].iter().all(|b| *b == 0));
        let app = [9u8; 20];
        assert!(mr_config_id_matches(
            &v1,
            &hash,
            &app,
            KeyProviderKind::None,
            &[]
        ));
        assert!(!mr_config_id_matches(
            &v1,
            &[8; 32],
            &app,
            KeyProviderKind::None,
            &[]
        ));
        let v2 = mr_config_id_v2(&hash, &app, KeyProviderKind::Kms, &[1, 2]);
        assert!(mr_config_id_matches(
            &v2,
            &hash,
            &app,
            KeyProviderKind::Kms,
            &[1, 2]
        ));
        assert!(!mr_config_id_matches(
            &v2,
            &hash,
            &app,
            KeyProviderKind::None,
            &[1, 2]
        ));
        assert!(mr_config_id_matches(
            &[0; 48],
            &hash,
            &app,
            KeyProviderKind::None,
            &[]
        ));
        let mut bad = v1;
        bad[0] = 3;
        assert!(!mr_config_id_matches(
            &bad,
            &hash,
            &app,
            KeyProviderKind::None,
            &[]
        ));
    }
}
