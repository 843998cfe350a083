//! ChainAuth's errors: each failure names what went wrong.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests
mod common;

use common::*;
use dstack_contracts::{ChainAuth, ChainError};

#[tokio::test]
async fn unreachable_endpoint_is_named() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let auth = ChainAuth::new(&url, [1; 20]).unwrap();
    match auth.is_app_allowed(&boot([2; 20])).await {
        Err(
            e @ ChainError::Unreachable {
                call: "isAppAllowed",
                ..
            },
        ) => {
            assert!(e.to_string().contains(&url), "{e}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(matches!(
        auth.chain_id().await,
        Err(ChainError::Unreachable {
            call: "eth_chainId",
            ..
        })
    ));
}

#[tokio::test]
async fn no_contract_at_address_is_named() {
    let chain = deployed().await;
    let auth = ChainAuth::new(chain.anvil.rpc_url(), [0x99; 20]).unwrap();
    match auth.gateway_app_id().await {
        Err(ChainError::NoContract {
            call: "gatewayAppId",
            address,
        }) => {
            assert_eq!(address.to_lowercase(), format!("0x{}", "99".repeat(20)))
        }
        other => panic!("expected NoContract, got {other:?}"),
    }
}

#[test]
fn bad_urls_and_keys_are_named() {
    assert!(matches!(
        ChainAuth::new("not a url", [0; 20]),
        Err(ChainError::BadUrl { .. })
    ));
    assert!(matches!(
        ChainAuth::new("ws://127.0.0.1:8545", [0; 20]),
        Err(ChainError::BadUrl { .. })
    ));
    #[cfg(not(feature = "https"))]
    {
        let e = ChainAuth::new("https://rpc.example", [0; 20]).unwrap_err();
        assert!(e.to_string().contains("`https` feature"), "{e}");
    }
    let e = dstack_contracts::admin::Admin::connect("http://127.0.0.1:1", "0x1234").unwrap_err();
    assert!(matches!(e, ChainError::BadKey));
}

#[cfg(feature = "https")]
#[tokio::test]
async fn https_endpoints_get_a_tls_client() {
    // Nothing listens: the point is that building the TLS client works (no
    // provider panic) and the failure is named.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let auth = ChainAuth::new(&format!("https://127.0.0.1:{port}"), [1; 20]).unwrap();
    assert!(matches!(
        auth.chain_id().await,
        Err(ChainError::Unreachable { .. })
    ));
}

#[test]
fn missing_anvil_says_how_to_install_it() {
    // Only the message: the variable is read at start, so set it in a child
    // process rather than racing the other tests in this binary.
    let e = dstack_contracts::anvil::AnvilError::Missing {
        path: "/nonexistent/anvil".into(),
    };
    assert!(e.to_string().contains("run contracts/build"), "{e}");
}

#[test]
fn admin_debug_never_shows_the_key() {
    let key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    let admin = dstack_contracts::admin::Admin::connect("http://127.0.0.1:1", key).unwrap();
    let shown = format!("{admin:?}");
    assert!(!shown.to_lowercase().contains(&key[..16]), "{shown}");
    // The address is derived from the key (anvil's first dev account).
    assert_eq!(
        admin.address(),
        dstack_contracts::parse_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266").unwrap()
    );
}
