//! The read-only view of a KmsAuth contract that the KMS consults on every
//! key request.

use alloy::primitives::Address;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};

use crate::bindings::kms::{DstackKms, IAppAuth};
use crate::{AppBootInfo, ChainError, Verdict};

/// A read-only client of one deployed `DstackKms` (no signer, no
/// transactions: only `eth_call` and `eth_chainId`).
#[derive(Debug, Clone)]
pub struct ChainAuth {
    url: String,
    kms: DstackKms::DstackKmsInstance<DynProvider>,
}

impl ChainAuth {
    /// A client for the KmsAuth contract at `kms_contract` over the JSON-RPC
    /// endpoint `rpc_url`. Nothing is sent until the first call.
    pub fn new(rpc_url: &str, kms_contract: [u8; 20]) -> Result<Self, ChainError> {
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(parse_url(rpc_url)?)
            .erased();
        Ok(Self {
            url: rpc_url.to_owned(),
            kms: DstackKms::new(Address::from(kms_contract), provider),
        })
    }

    /// The KmsAuth contract's address.
    pub fn kms_contract(&self) -> [u8; 20] {
        self.kms.address().0.0
    }

    /// The RPC endpoint.
    pub fn rpc_url(&self) -> &str {
        &self.url
    }

    /// `DstackKms.isAppAllowed`: registered app, allowed OS image, deployed
    /// app contract, then the app contract's own policy.
    pub async fn is_app_allowed(&self, boot: &AppBootInfo) -> Result<Verdict, ChainError> {
        let r = self
            .kms
            .isAppAllowed(IAppAuth::AppBootInfo::from(boot))
            .call()
            .await
            .map_err(|e| self.err("isAppAllowed", e))?;
        Ok(Verdict {
            allowed: r.isAllowed,
            reason: r.reason,
        })
    }

    /// `DstackKms.isKmsAllowed`: UpToDate TCB, allowed OS image, aggregated
    /// measurement and device.
    pub async fn is_kms_allowed(&self, boot: &AppBootInfo) -> Result<Verdict, ChainError> {
        let r = self
            .kms
            .isKmsAllowed(IAppAuth::AppBootInfo::from(boot))
            .call()
            .await
            .map_err(|e| self.err("isKmsAllowed", e))?;
        Ok(Verdict {
            allowed: r.isAllowed,
            reason: r.reason,
        })
    }

    /// The app id of the gateway the KMS trusts (as the owner set it: a
    /// string, usually hex without `0x`; empty when unset).
    pub async fn gateway_app_id(&self) -> Result<String, ChainError> {
        self.kms
            .gatewayAppId()
            .call()
            .await
            .map_err(|e| self.err("gatewayAppId", e))
    }

    /// The DstackApp implementation new apps are deployed with (zero when unset).
    pub async fn app_implementation(&self) -> Result<[u8; 20], ChainError> {
        let a = self
            .kms
            .appImplementation()
            .call()
            .await
            .map_err(|e| self.err("appImplementation", e))?;
        Ok(a.0.0)
    }

    /// Whether `app_id` is registered with this KMS.
    pub async fn is_registered_app(&self, app_id: [u8; 20]) -> Result<bool, ChainError> {
        self.kms
            .registeredApps(Address::from(app_id))
            .call()
            .await
            .map_err(|e| self.err("registeredApps", e))
    }

    /// The chain id the endpoint reports.
    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        self.kms
            .provider()
            .get_chain_id()
            .await
            .map_err(|e| ChainError::from_transport("eth_chainId", &self.url, e))
    }

    fn err(&self, call: &'static str, e: alloy::contract::Error) -> ChainError {
        ChainError::from_contract(call, &self.url, *self.kms.address(), e)
    }
}

/// `scheme://host[:port]` of `url`, for messages and logs: provider URLs
/// carry API keys in the path, the query or the user info.
pub fn public_endpoint(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "the configured RPC endpoint".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

pub(crate) fn parse_url(url: &str) -> Result<alloy::transports::http::reqwest::Url, ChainError> {
    let bad = |reason: String| ChainError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed =
        alloy::transports::http::reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    // reqwest built with TLS but no provider panics when building a client
    // unless one is installed process-wide. Our `https` feature turns that
    // on, and so may another crate in the same build (feature unification:
    // e.g. a guest binary whose OCI client uses reqwest's rustls). An Err
    // only means another part of the process installed one first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match parsed.scheme() {
        "http" => Ok(parsed),
        "https" if cfg!(feature = "https") => Ok(parsed),
        // Without the feature reqwest has no TLS and would fail on the first
        // call with a less helpful message.
        "https" => Err(bad(
            "https needs dstack-contracts built with the `https` feature".into(),
        )),
        other => Err(bad(format!("scheme {other:?} is not http(s)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_endpoint_drops_keys() {
        assert_eq!(
            public_endpoint("https://eth.example/v3/SECRETKEY?x=1"),
            "https://eth.example"
        );
        assert_eq!(
            public_endpoint("http://u:p@127.0.0.1:8545"),
            "http://127.0.0.1:8545"
        );
        assert_eq!(public_endpoint("nonsense"), "the configured RPC endpoint");
    }
}
