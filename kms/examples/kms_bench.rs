//! `bench/kms/run`: key-release latency of a real `dstack-kms` server
//! (HTTPS, RA-TLS client certificates, quote verification, policy, key
//! derivation) under concurrent clients, next to bare verification of the
//! same quote with the same verifier, in the same run (DESIGN §9).
//!
//! `cargo run -p dstack-kms --example kms_bench -- [CLIENTS] [REQUESTS_PER_CLIENT]`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dstack_attest::{
    Platform, QuoteVerifier, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity,
};
use dstack_kms::Kms;
use dstack_kms::auth::{AuthBackend, PolicyFile};
use dstack_kms::keystore::RootKeys;
use dstack_kms_client::{KmsClient, client_certificate};
use dstack_ra_tls::RaTlsVerifier;

const APP_ID: [u8; 20] = [0xa1; 20];
const COMPOSE: [u8; 32] = [0xc0; 32];

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration, Duration) {
    samples.sort();
    // Nearest rank: index ceil(q * n) - 1, in integers (q in percent).
    let at = |percent: usize| samples[(samples.len() * percent).div_ceil(100).max(1) - 1];
    (at(50), at(99), samples[0], samples[samples.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let clients = args.first().copied().unwrap_or(16);
    let per_client = args.get(1).copied().unwrap_or(10);

    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = SimPlatform::new(authority.clone(), SimTdIdentity::default(), vec![]).unwrap();
    for (name, payload) in [
        ("app-id", APP_ID.to_vec()),
        ("compose-hash", COMPOSE.to_vec()),
        ("instance-id", vec![7; 20]),
    ] {
        td.emit_event(&RuntimeEvent {
            name: name.into(),
            payload,
        })
        .unwrap();
    }
    let collateral = td.collateral().unwrap().unwrap();
    let quotes = || QuoteVerifier::new(authority.root_der().to_vec());
    let policy = PolicyFile::parse(&format!(
        r#"{{"apps":{{"{}":{{"compose_hashes":["{}"]}}}}}}"#,
        hex::encode(APP_ID),
        hex::encode(COMPOSE)
    ))
    .unwrap();
    let kms = Kms::new(
        RootKeys::generate().unwrap(),
        RaTlsVerifier::new(quotes()).with_collateral(collateral.clone()),
        AuthBackend::Policy(policy),
    )
    .unwrap();
    let tls = Arc::new(
        kms.rpc_server_config(
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            "kms.bench",
            None,
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(dstack_kms::server::serve(listener, Arc::new(kms), tls));

    // What a guest does once per boot: the temp CA and its client certificate.
    let client = KmsClient::new(&url).unwrap();
    let (temp, root) = client.temp_ca().await.unwrap();
    let cert = Arc::new(client_certificate(&td, &temp, "").unwrap());
    let quote = dstack_ra_tls::certificate_quote(&cert.cert_der).unwrap();

    // Warm up both paths once.
    client.app_keys_with(&root, &cert, "").await.unwrap();
    quotes()
        .verify_at(&quote, &collateral, SystemTime::now())
        .unwrap();

    // Key release: `clients` concurrent callers, each a fresh TLS connection per call.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, root, cert) = (client.clone(), root.clone(), cert.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for _ in 0..per_client {
                let t = Instant::now();
                client.app_keys_with(&root, &cert, "").await.unwrap();
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut release = Vec::new();
    for task in tasks {
        release.extend(task.await.unwrap());
    }
    let release_wall = started.elapsed();

    // Bare verification of the same quote, same concurrency, same runtime.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (quote, collateral) = (quote.clone(), collateral.clone());
        let verifier = quotes();
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut samples = Vec::new();
            for _ in 0..per_client {
                let t = Instant::now();
                verifier
                    .verify_at(&quote, &collateral, SystemTime::now())
                    .unwrap();
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut bare = Vec::new();
    for task in tasks {
        bare.extend(task.await.unwrap());
    }
    let bare_wall = started.elapsed();

    // Where the difference goes, one caller at a time: a TLS connection and
    // request with no evidence to check (GetMeta), and the key derivation.
    let mut transport = Vec::new();
    for _ in 0..per_client.max(10) {
        let t = Instant::now();
        client.meta(&root).await.unwrap();
        transport.push(t.elapsed());
    }
    let derive_keys = RootKeys::generate().unwrap();
    let mut derivation = Vec::new();
    for _ in 0..per_client.max(10) {
        let t = Instant::now();
        derive_keys.root.app_keys(&APP_ID, &[7; 20]).unwrap();
        derivation.push(t.elapsed());
    }
    let (tm, ..) = stats(transport);
    let (dm, ..) = stats(derivation);

    let (rm, rp, rmin, rmax) = stats(release);
    let (bm, bp, bmin, bmax) = stats(bare);
    let n = clients * per_client;
    println!("clients={clients} requests={n}");
    println!(
        "key release (GetAppKey over RA-TLS): median {:.2} ms  p99 {:.2} ms  (min {:.2}, max {:.2})  {:.0} req/s",
        ms(rm),
        ms(rp),
        ms(rmin),
        ms(rmax),
        n as f64 / release_wall.as_secs_f64()
    );
    println!(
        "bare quote verification:           median {:.2} ms  p99 {:.2} ms  (min {:.2}, max {:.2})  {:.0} verifications/s",
        ms(bm),
        ms(bp),
        ms(bmin),
        ms(bmax),
        n as f64 / bare_wall.as_secs_f64()
    );
    println!(
        "components (1 caller): TLS connection + request without evidence {:.2} ms, app key derivation {:.2} ms",
        ms(tm),
        ms(dm)
    );
    println!("p99_ratio={:.2}", rp.as_secs_f64() / bp.as_secs_f64());
    // Under contention the medians mostly measure queueing; the rates
    // compare the CPU each path costs (the client's TLS runs in this process).
    println!(
        "throughput_ratio={:.2}",
        (n as f64 / bare_wall.as_secs_f64()) / (n as f64 / release_wall.as_secs_f64())
    );
    println!("ratio={:.2}", rm.as_secs_f64() / bm.as_secs_f64());
}
