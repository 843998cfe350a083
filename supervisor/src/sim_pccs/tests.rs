//! The sim PCCS over real HTTP on loopback: dcap-qvl's own client and
//! dstack-attest's cache fetch from it, and what they fetch verifies.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, Duration, Utc};
use dstack_attest::pccs::{CacheStats, CollateralCache, PccsError};
use dstack_attest::sim::SimEnclaveIdentity;
use dstack_attest::{Collateral, QuoteVerifier, SimTdIdentity, TcbStatus};
use tower::ServiceExt;

use super::*;

const ENCLAVE: SimEnclaveIdentity = SimEnclaveIdentity {
    mr_enclave: [0xee; 32],
    mr_signer: [0x55; 32],
    isv_prod_id: 1,
    isv_svn: 1,
};

/// Serves `app` on an ephemeral loopback port; the URL to reach it.
async fn spawn(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn sim_pccs() -> (Arc<SimAuthority>, String) {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let url = spawn(router(authority.clone())).await;
    (authority, url)
}

fn td_quote(authority: &SimAuthority, byte: u8) -> Vec<u8> {
    authority
        .quote(&SimTdIdentity::default(), &[byte; 64])
        .unwrap()
}

#[tokio::test]
async fn dcap_qvl_client_fetches_what_verifies() {
    let (authority, url) = sim_pccs().await;
    let verifier = QuoteVerifier::new(authority.root_der().to_vec());
    let client = dcap_qvl::collateral::CollateralClient::with_default_http(url.as_str()).unwrap();
    for quote in [
        td_quote(&authority, 1),
        authority.sgx_quote(&ENCLAVE, &[2; 64]).unwrap(),
    ] {
        let raw = client.fetch(&quote).await.unwrap();
        let verified = verifier.verify(&quote, &Collateral::from_raw(raw)).unwrap();
        assert_eq!(verified.status, TcbStatus::UpToDate);
    }
    // dstack-attest's own client, over the same wire, agrees.
    let quote = td_quote(&authority, 3);
    let ours = Collateral::fetch(&url, &quote).await.unwrap();
    verifier.verify(&quote, &ours).unwrap();
}

#[tokio::test]
async fn cache_counts_hits_and_refetches_after_next_update() {
    let (authority, url) = sim_pccs().await;
    let now = Arc::new(Mutex::new(Utc::now()));
    let clock = now.clone();
    let cache = CollateralCache::new(url)
        .unwrap()
        .with_clock(Arc::new(move || *clock.lock().unwrap()));
    let verifier = QuoteVerifier::new(authority.root_der().to_vec());

    // First TDX quote: fetched; a second one from the same platform: cached.
    let (a, b) = (td_quote(&authority, 1), td_quote(&authority, 2));
    verifier.verify(&a, &cache.get(&a).await.unwrap()).unwrap();
    verifier.verify(&b, &cache.get(&b).await.unwrap()).unwrap();
    assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1 });

    // An SGX quote needs other collateral (SGX TCB info, QE identity).
    let sgx = authority.sgx_quote(&ENCLAVE, &[3; 64]).unwrap();
    verifier
        .verify(&sgx, &cache.get(&sgx).await.unwrap())
        .unwrap();
    verifier
        .verify(&sgx, &cache.get(&sgx).await.unwrap())
        .unwrap();
    assert_eq!(cache.stats(), CacheStats { hits: 2, misses: 2 });

    // Just before the next update (issued an hour ago, 30 days): still cached.
    let issued = Utc::now() - Duration::hours(1);
    let next_update = issued + Duration::days(30);
    set(&now, next_update - Duration::minutes(5));
    cache.get(&a).await.unwrap();
    assert_eq!(cache.stats(), CacheStats { hits: 3, misses: 2 });

    // Past it: fetched again. What the PCCS hands out now is itself past its
    // next update at that (fake) time, so it is returned but not kept.
    set(&now, next_update + Duration::minutes(5));
    let stale = cache.get(&a).await.unwrap();
    cache.get(&a).await.unwrap();
    assert_eq!(cache.stats(), CacheStats { hits: 3, misses: 4 });
    assert!(stale.validity().unwrap().next_update < *now.lock().unwrap());

    // Back to the present: a fresh fetch is kept again.
    set(&now, Utc::now());
    cache.get(&a).await.unwrap();
    cache.get(&a).await.unwrap();
    assert_eq!(cache.stats(), CacheStats { hits: 4, misses: 5 });
}

fn set(now: &Mutex<DateTime<Utc>>, to: DateTime<Utc>) {
    *now.lock().unwrap() = to;
}

#[tokio::test]
async fn garbage_and_errors_are_named() {
    let authority = SimAuthority::generate().unwrap();
    let quote = td_quote(&authority, 1);

    let teapot = spawn(Router::new().fallback(|| async { (StatusCode::IM_A_TEAPOT, "no") })).await;
    let err = CollateralCache::new(teapot)
        .unwrap()
        .get(&quote)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PccsError::Status { status: 418, .. }),
        "{err}"
    );

    let nonsense = spawn(Router::new().fallback(|| async { "not collateral" })).await;
    let err = CollateralCache::new(nonsense)
        .unwrap()
        .get(&quote)
        .await
        .unwrap_err();
    assert!(matches!(err, PccsError::Garbage { .. }), "{err}");
    assert!(
        err.to_string().contains("SGX-PCK-CRL-Issuer-Chain"),
        "{err}"
    );

    // Another authority's PCCS: the collateral arrives, and fails to verify
    // under this quote's root (the PCCS is trusted for availability only).
    let (_, other) = sim_pccs().await;
    let collateral = Collateral::fetch(&other, &quote).await.unwrap();
    let err = QuoteVerifier::new(authority.root_der().to_vec())
        .verify(&quote, &collateral)
        .unwrap_err();
    assert!(!err.to_string().is_empty());
}

async fn status_of(uri: &str) -> (StatusCode, String) {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let response = router(authority)
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn bad_parameters_get_4xx_naming_them() {
    for (uri, status, names) in [
        ("/sgx/certification/v4/pckcrl", 400, "ca"),
        ("/sgx/certification/v4/pckcrl?ca=other", 400, "ca"),
        (
            "/sgx/certification/v4/pckcrl?ca=processor&encoding=x",
            400,
            "encoding",
        ),
        ("/tdx/certification/v4/tcb", 400, "fmspc"),
        ("/tdx/certification/v4/tcb?fmspc=zz", 400, "fmspc"),
        ("/tdx/certification/v4/tcb?fmspc=00906ED50000", 404, "fmspc"),
        (
            "/tdx/certification/v4/qe/identity?update=later",
            400,
            "update",
        ),
        ("/sev/certification/v4/tcb?fmspc=5D5700000000", 404, "path"),
        ("/tdx/certification/v3/tcb", 404, "path"),
    ] {
        let (got, body) = status_of(uri).await;
        assert_eq!(got.as_u16(), status, "{uri}: {body}");
        assert!(body.contains(names), "{uri}: {body}");
    }
}

#[tokio::test]
async fn answers_have_intel_shapes() {
    let (status, body) = status_of("/sgx/certification/v4/pckcrl?ca=platform").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("-----BEGIN X509 CRL-----"), "{body}");
    let (status, body) = status_of("/sgx/certification/v4/rootcacrl").await;
    assert_eq!(status, StatusCode::OK);
    assert!(hex::decode(&body).is_ok(), "{body}");
    let (status, body) = status_of("/sgx/certification/v4/tcb?fmspc=5d5700000000").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["tcbInfo"]["id"], "SGX");
    assert_eq!(json["signature"].as_str().unwrap().len(), 128);
    let (_, body) = status_of("/tdx/certification/v4/qe/identity").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["enclaveIdentity"]["id"], "TD_QE");
    assert_eq!(guest_url(8083), "http://10.0.2.2:8083");
}
