//! Contract bindings generated from the committed artifacts in `out/`
//! (ABI and creation bytecode), so that deploys need no Solidity toolchain.
//!
//! Solidity overloads get numbered Rust names in ABI order:
//! `deployAndRegisterApp_0` is the 5-argument legacy factory,
//! `deployAndRegisterApp_1` the 6-argument one (checked by the tests).
// Generated code: the ABI is the documentation.
#![allow(missing_docs, clippy::too_many_arguments)]

/// KmsAuth.
pub mod kms {
    alloy::sol!(
        #[sol(rpc, all_derives)]
        DstackKms,
        "out/DstackKms.json"
    );
}

/// AppAuth.
pub mod app {
    alloy::sol!(
        #[sol(rpc, all_derives)]
        DstackApp,
        "out/DstackApp.json"
    );
}

/// The ERC-1967 proxy both contracts live behind.
pub mod proxy {
    alloy::sol!(
        #[sol(rpc, all_derives)]
        ERC1967Proxy,
        "out/ERC1967Proxy.json"
    );
}

/// Test-only next version of DstackKms (same storage, one extra function).
pub mod kms_v2 {
    alloy::sol!(
        #[sol(rpc, all_derives)]
        DstackKmsV2,
        "out/DstackKmsV2.json"
    );
}

/// Test-only next version of DstackApp (same storage, one extra function).
pub mod app_v2 {
    alloy::sol!(
        #[sol(rpc, all_derives)]
        DstackAppV2,
        "out/DstackAppV2.json"
    );
}
