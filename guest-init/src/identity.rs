//! The app's identity (UPSTREAM.md §3.2): compose-hash, app-id and
//! instance-id, from the exact app-compose bytes and the host's persisted
//! instance info.

use std::io::{self, Read};

use dstack_compose::{AppCompose, KeyProviderKind, app_id, compose_hash};
use dstack_proto::host::InstanceInfo;
use sha2::{Digest, Sha256};

use crate::state::Identity;

/// The identity, and the instance info to hand back to the host when it
/// changed (a new seed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// Hex identity for guest info.
    pub identity: Identity,
    /// The instance info to persist, when the host must store a new one.
    pub persist: Option<InstanceInfo>,
    /// The raw 32-byte compose-hash.
    pub compose_hash: [u8; 32],
}

/// Derives the identity. `random` supplies a fresh 20-byte seed when one is
/// needed: with no stored seed, or with key provider `none` (its disk is not
/// reusable, so upstream takes a new seed every boot).
pub fn derive(
    app_compose_bytes: &[u8],
    app: &AppCompose,
    stored: &InstanceInfo,
    random: &mut dyn FnMut() -> io::Result<[u8; 20]>,
) -> io::Result<Derived> {
    let hash = compose_hash(app_compose_bytes);
    // A deployer may pin the app-id (e.g. an on-chain app address).
    let app_id: Vec<u8> = if stored.app_id.len() == 20 {
        stored.app_id.clone()
    } else {
        app_id(&hash).to_vec()
    };
    let mut identity = Identity {
        compose_hash: hex::encode(hash),
        app_id: hex::encode(&app_id),
        instance_id: String::new(),
    };
    if app.no_instance_id {
        return Ok(Derived {
            identity,
            persist: None,
            compose_hash: hash,
        });
    }
    let fresh = stored.instance_id_seed.is_empty() || app.key_provider() == KeyProviderKind::None;
    let seed = if fresh {
        random()?.to_vec()
    } else {
        stored.instance_id_seed.clone()
    };
    let mut h = Sha256::new();
    h.update(&seed);
    h.update(&app_id);
    let instance_id = h.finalize()[..20].to_vec();
    identity.instance_id = hex::encode(&instance_id);
    let info = InstanceInfo {
        instance_id_seed: seed,
        instance_id,
        app_id,
    };
    Ok(Derived {
        identity,
        persist: (info != *stored).then_some(info),
        compose_hash: hash,
    })
}

/// 20 random bytes from the kernel.
pub fn random_seed() -> io::Result<[u8; 20]> {
    let mut seed = [0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// A 32-byte key seed from the kernel.
pub fn random_seed32() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"manifest_version":2,"name":"a","runner":"docker-compose","docker_compose_file":"services:\n  w:\n    image: busybox\n","kms_enabled":true}"#;

    fn app(json: &str) -> AppCompose {
        AppCompose::parse(json).unwrap().0
    }

    #[test]
    fn follows_upstream_rules() {
        let a = app(JSON);
        let mut rng = || Ok([7u8; 20]);
        let d = derive(JSON.as_bytes(), &a, &InstanceInfo::default(), &mut rng).unwrap();
        let hash = Sha256::digest(JSON.as_bytes());
        assert_eq!(d.identity.compose_hash, hex::encode(hash));
        assert_eq!(d.identity.app_id, hex::encode(&hash[..20]));
        let mut h = Sha256::new();
        h.update([7u8; 20]);
        h.update(&hash[..20]);
        assert_eq!(d.identity.instance_id, hex::encode(&h.finalize()[..20]));
        let persist = d.persist.clone().unwrap();
        assert_eq!(persist.instance_id_seed, vec![7u8; 20]);

        // Next boot with KMS: the stored seed is reused, nothing to persist.
        let mut never = || -> io::Result<[u8; 20]> { panic!("no new seed") };
        let again = derive(JSON.as_bytes(), &a, &persist, &mut never).unwrap();
        assert_eq!(again.identity, d.identity);
        assert_eq!(again.persist, None);
    }

    #[test]
    fn the_local_provider_keeps_the_stored_seed() {
        // The local key is bound to RTMR3, which holds the instance-id: a
        // fresh seed each boot would change the key each boot.
        let json = JSON.replace(r#""kms_enabled":true"#, r#""key_provider":"local""#);
        let a = app(&json);
        let mut rng = || Ok([4u8; 20]);
        let first = derive(json.as_bytes(), &a, &InstanceInfo::default(), &mut rng).unwrap();
        let stored = first.persist.unwrap();
        let mut never = || -> io::Result<[u8; 20]> { panic!("no new seed") };
        let again = derive(json.as_bytes(), &a, &stored, &mut never).unwrap();
        assert_eq!(again.identity, first.identity);
        assert_eq!(again.persist, None);
    }

    #[test]
    fn no_key_provider_means_a_fresh_seed_and_pins_are_kept() {
        let json = JSON.replace(r#","kms_enabled":true"#, "");
        let a = app(&json);
        let stored = InstanceInfo {
            instance_id_seed: vec![1; 20],
            instance_id: vec![],
            app_id: vec![9; 20],
        };
        let mut rng = || Ok([2u8; 20]);
        let d = derive(json.as_bytes(), &a, &stored, &mut rng).unwrap();
        assert_eq!(d.identity.app_id, hex::encode([9u8; 20]));
        assert_eq!(d.persist.unwrap().instance_id_seed, vec![2u8; 20]);

        let no_id = app(&json.replace("\"name\"", "\"no_instance_id\":true,\"name\""));
        let d = derive(json.as_bytes(), &no_id, &stored, &mut rng).unwrap();
        assert!(d.identity.instance_id.is_empty());
        assert!(d.persist.is_none());
    }
}
