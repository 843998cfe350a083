//! The simulated TEE's PCCS: Intel's PCCS API (v4) as dcap-qvl's collateral
//! client calls it, answering with the simulated authority's collateral, so
//! verifiers on sim hosts fetch collateral exactly as on TDX hosts.
//!
//! Read-only and public: CRLs, TCB info and QE identities signed under the
//! simulated root; no key and nothing about any VM. Everything is issued
//! fresh at request time (valid from an hour ago for thirty days).
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /sgx/certification/v4/pckcrl?ca=processor\|platform[&encoding=der\|pem]` | the PCK CRL; header `SGX-PCK-CRL-Issuer-Chain` |
//! | `GET /sgx/certification/v4/rootcacrl` | the root CA CRL, hex-encoded DER (as a PCCS answers) |
//! | `GET /{sgx,tdx}/certification/v4/tcb?fmspc=HEX` | `{"tcbInfo", "signature"}`; header `TCB-Info-Issuer-Chain` |
//! | `GET /{sgx,tdx}/certification/v4/qe/identity[?update=standard\|early]` | `{"enclaveIdentity", "signature"}`; header `SGX-Enclave-Identity-Issuer-Chain` |
//!
//! Issuer chains are URL-encoded PEM, as Intel sends them. Errors are
//! `{"error": "..."}` naming the parameter: 400 bad parameter, 404 unknown
//! FMSPC or path.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use dstack_attest::{Collateral, SimAuthority};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// The address the sim PCCS listens on unless `--sim-pccs-listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8083";

/// Where a guest on QEMU user networking reaches a host port: the gateway.
pub fn guest_url(port: u16) -> String {
    format!("http://{}:{port}", crate::config::GUEST_HOST_ALIAS)
}

/// The PCCS routes, answering from `authority`.
pub fn router(authority: Arc<SimAuthority>) -> Router {
    Router::new()
        .route("/sgx/certification/v4/pckcrl", get(pck_crl))
        .route("/sgx/certification/v4/rootcacrl", get(root_ca_crl))
        .route("/{tee}/certification/v4/tcb", get(tcb_info))
        .route("/{tee}/certification/v4/qe/identity", get(qe_identity))
        .fallback(|| async { not_found() })
        .with_state(authority)
}

/// Serves the PCCS on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    authority: Arc<SimAuthority>,
) -> std::io::Result<()> {
    axum::serve(listener, router(authority)).await
}

type Params = Query<HashMap<String, String>>;

/// A refused request: `{"error": "..."}` with its status.
#[derive(Debug)]
struct Rejection(StatusCode, String);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad(message: &str) -> Rejection {
    Rejection(StatusCode::BAD_REQUEST, message.into())
}

fn not_found() -> Rejection {
    Rejection(StatusCode::NOT_FOUND, "no such PCCS path".into())
}

/// The authority's collateral of the moment; `sgx` picks SGX TCB info and the QE identity.
fn issue(authority: &SimAuthority, sgx: bool) -> Result<Collateral, Rejection> {
    let now = Utc::now();
    let issued = if sgx {
        authority.sgx_collateral(now)
    } else {
        authority.collateral(now)
    };
    issued.map_err(|e| {
        Rejection(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the simulated authority cannot issue collateral: {e}"),
        )
    })
}

/// `sgx` or `tdx` from the path.
fn tee(segment: &str) -> Result<bool, Rejection> {
    match segment {
        "sgx" => Ok(true),
        "tdx" => Ok(false),
        _ => Err(not_found()),
    }
}

fn chain_header(name: &'static str, pem: &str) -> (HeaderName, HeaderValue) {
    let encoded = utf8_percent_encode(pem, NON_ALPHANUMERIC).to_string();
    (
        HeaderName::from_static(name),
        // Percent-encoding leaves only visible ASCII.
        HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static("")),
    )
}

fn crl_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN X509 CRL-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END X509 CRL-----\n");
    out
}

async fn pck_crl(
    State(authority): State<Arc<SimAuthority>>,
    Query(q): Params,
) -> Result<Response, Rejection> {
    match q.get("ca").map(String::as_str) {
        // The simulated hierarchy has one PCK CA; it stands for both.
        Some("processor" | "platform") => {}
        Some(_) => return Err(bad("ca: must be processor or platform")),
        None => return Err(bad("ca: missing")),
    }
    let der = match q.get("encoding").map(String::as_str) {
        Some("der") => true,
        None | Some("pem") => false,
        Some(_) => return Err(bad("encoding: must be der or pem")),
    };
    let collateral = issue(&authority, false)?;
    let raw = collateral.raw();
    let chain = chain_header("sgx-pck-crl-issuer-chain", &raw.pck_crl_issuer_chain);
    Ok(if der {
        let content_type = (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/pkix-crl"),
        );
        ([chain, content_type], raw.pck_crl.clone()).into_response()
    } else {
        let content_type = (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        );
        ([chain, content_type], crl_pem(&raw.pck_crl)).into_response()
    })
}

async fn root_ca_crl(State(authority): State<Arc<SimAuthority>>) -> Result<String, Rejection> {
    Ok(hex::encode(&issue(&authority, false)?.raw().root_ca_crl))
}

/// A signed JSON body as Intel wraps it: the object verbatim (the signature
/// covers its exact bytes) and the signature as hex.
fn signed_body(field: &str, json: &str, signature: &[u8]) -> String {
    format!(
        "{{\"{field}\":{json},\"signature\":\"{}\"}}",
        hex::encode(signature)
    )
}

fn json_response(chain: (HeaderName, HeaderValue), body: String) -> Response {
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ([chain, content_type], body).into_response()
}

async fn tcb_info(
    State(authority): State<Arc<SimAuthority>>,
    Path(segment): Path<String>,
    Query(q): Params,
) -> Result<Response, Rejection> {
    let sgx = tee(&segment)?;
    let fmspc = q.get("fmspc").ok_or_else(|| bad("fmspc: missing"))?;
    let fmspc = match hex::decode(fmspc) {
        Ok(bytes) if bytes.len() == 6 => bytes,
        _ => return Err(bad("fmspc: must be 6 bytes of hex")),
    };
    if fmspc != authority.fmspc() {
        return Err(Rejection(
            StatusCode::NOT_FOUND,
            format!(
                "fmspc: no TCB info for {} (the simulated platform is {})",
                hex::encode_upper(&fmspc),
                hex::encode_upper(authority.fmspc())
            ),
        ));
    }
    let collateral = issue(&authority, sgx)?;
    let raw = collateral.raw();
    Ok(json_response(
        chain_header("tcb-info-issuer-chain", &raw.tcb_info_issuer_chain),
        signed_body("tcbInfo", &raw.tcb_info, &raw.tcb_info_signature),
    ))
}

async fn qe_identity(
    State(authority): State<Arc<SimAuthority>>,
    Path(segment): Path<String>,
    Query(q): Params,
) -> Result<Response, Rejection> {
    let sgx = tee(&segment)?;
    match q.get("update").map(String::as_str) {
        // The simulated authority has a single TCB evaluation: both answer it.
        None | Some("standard" | "early") => {}
        Some(_) => return Err(bad("update: must be standard or early")),
    }
    let collateral = issue(&authority, sgx)?;
    let raw = collateral.raw();
    Ok(json_response(
        chain_header(
            "sgx-enclave-identity-issuer-chain",
            &raw.qe_identity_issuer_chain,
        ),
        signed_body(
            "enclaveIdentity",
            &raw.qe_identity,
            &raw.qe_identity_signature,
        ),
    ))
}

#[cfg(test)]
mod tests;
