//! The compiled ABI is upstream dstack's, signature for signature: upstream's
//! KMS, auth-eth webhook, SDKs and explorers encode against it. The lists are
//! upstream's `DstackKms` / `DstackApp` functions and events, sorted.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use dstack_contracts::alloy::json_abi::{ContractObject, JsonAbi};

const UPSTREAM_KMS: &[&str] = &[
    "UPGRADE_INTERFACE_VERSION()",
    "acceptOwnership()",
    "addKmsAggregatedMr(bytes32)",
    "addKmsDevice(bytes32)",
    "addOsImageHash(bytes32)",
    "allowedOsImages(bytes32)",
    "appImplementation()",
    "deployAndRegisterApp(address,bool,bool,bool,bytes32,bytes32)",
    "deployAndRegisterApp(address,bool,bool,bytes32,bytes32)",
    "event AppDeployedViaFactory(address,address)",
    "event AppImplementationSet(address)",
    "event AppRegistered(address)",
    "event GatewayAppIdSet(string)",
    "event Initialized(uint64)",
    "event KmsAggregatedMrAdded(bytes32)",
    "event KmsAggregatedMrRemoved(bytes32)",
    "event KmsDeviceAdded(bytes32)",
    "event KmsDeviceRemoved(bytes32)",
    "event KmsInfoSet(bytes)",
    "event OsImageHashAdded(bytes32)",
    "event OsImageHashRemoved(bytes32)",
    "event OwnershipTransferStarted(address,address)",
    "event OwnershipTransferred(address,address)",
    "event PolicyChanged(address,bytes32,bytes32,bool)",
    "event Upgraded(address)",
    "gatewayAppId()",
    "initialize(address,address)",
    "isAppAllowed((address,bytes32,address,bytes32,bytes32,bytes32,bytes32,string,string[]))",
    "isKmsAllowed((address,bytes32,address,bytes32,bytes32,bytes32,bytes32,string,string[]))",
    "kmsAllowedAggregatedMrs(bytes32)",
    "kmsAllowedDeviceIds(bytes32)",
    "kmsInfo()",
    "owner()",
    "pendingOwner()",
    "proxiableUUID()",
    "registerApp(address)",
    "registeredApps(address)",
    "removeKmsAggregatedMr(bytes32)",
    "removeKmsDevice(bytes32)",
    "removeOsImageHash(bytes32)",
    "renounceOwnership()",
    "setAppImplementation(address)",
    "setGatewayAppId(string)",
    "setKmsEventlog(bytes)",
    "setKmsInfo((bytes,bytes,bytes,bytes))",
    "setKmsQuote(bytes)",
    "supportsInterface(bytes4)",
    "transferOwnership(address)",
    "upgradeToAndCall(address,bytes)",
];

const UPSTREAM_APP: &[&str] = &[
    "UPGRADE_INTERFACE_VERSION()",
    "acceptOwnership()",
    "addComposeHash(bytes32)",
    "addDevice(bytes32)",
    "allowAnyDevice()",
    "allowedComposeHashes(bytes32)",
    "allowedDeviceIds(bytes32)",
    "disableUpgrades()",
    "event AllowAnyDeviceSet(bool)",
    "event ComposeHashAdded(bytes32)",
    "event ComposeHashRemoved(bytes32)",
    "event DeviceAdded(bytes32)",
    "event DeviceRemoved(bytes32)",
    "event Initialized(uint64)",
    "event OwnershipTransferStarted(address,address)",
    "event OwnershipTransferred(address,address)",
    "event PolicyChanged(address,bytes32,bytes32,bool)",
    "event RequireTcbUpToDateSet(bool)",
    "event Upgraded(address)",
    "event UpgradesDisabled()",
    "initialize(address,bool,bool,bool,bytes32,bytes32)",
    "initialize(address,bool,bool,bytes32,bytes32)",
    "isAppAllowed((address,bytes32,address,bytes32,bytes32,bytes32,bytes32,string,string[]))",
    "owner()",
    "pendingOwner()",
    "proxiableUUID()",
    "removeComposeHash(bytes32)",
    "removeDevice(bytes32)",
    "renounceOwnership()",
    "requireTcbUpToDate()",
    "setAllowAnyDevice(bool)",
    "setRequireTcbUpToDate(bool)",
    "supportsInterface(bytes4)",
    "transferOwnership(address)",
    "upgradeToAndCall(address,bytes)",
    "version()",
];

fn artifact(name: &str) -> JsonAbi {
    // The manifest dir cargo gives the running test, before the one compiled
    // in: a target dir shared by two checkouts can hold a build of the other.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path = format!("{dir}/out/{name}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let object: ContractObject =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    object.abi.unwrap_or_else(|| panic!("{path} has no abi"))
}

fn signatures(abi: &JsonAbi) -> Vec<String> {
    let mut s: Vec<String> = abi
        .functions()
        .map(|f| f.signature())
        .chain(abi.events().map(|e| format!("event {}", e.signature())))
        .collect();
    s.sort();
    s
}

#[test]
fn kms_abi_is_upstreams() {
    assert_eq!(signatures(&artifact("DstackKms")), UPSTREAM_KMS);
}

#[test]
fn app_abi_is_upstreams() {
    assert_eq!(signatures(&artifact("DstackApp")), UPSTREAM_APP);
}

#[test]
fn indexed_event_fields_are_upstreams() {
    // Indexing changes which log topics carry a field, so it is ABI too.
    let indexed = |abi: &JsonAbi, event: &str| -> Vec<bool> {
        abi.event(event).unwrap()[0]
            .inputs
            .iter()
            .map(|i| i.indexed)
            .collect()
    };
    let kms = artifact("DstackKms");
    assert_eq!(indexed(&kms, "PolicyChanged"), [true, true, true, false]);
    assert_eq!(indexed(&kms, "AppDeployedViaFactory"), [true, true]);
    assert_eq!(indexed(&kms, "AppRegistered"), [false]);
    assert_eq!(indexed(&kms, "AppImplementationSet"), [false]);
    let app = artifact("DstackApp");
    assert_eq!(indexed(&app, "PolicyChanged"), [true, true, true, false]);
    assert_eq!(indexed(&app, "ComposeHashAdded"), [false]);
}
