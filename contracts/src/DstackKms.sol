// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {ERC1967Proxy} from "@openzeppelin/contracts/proxy/ERC1967/ERC1967Proxy.sol";
import {UUPSUpgradeable} from "@openzeppelin/contracts/proxy/utils/UUPSUpgradeable.sol";
import {Initializable} from "@openzeppelin/contracts-upgradeable/proxy/utils/Initializable.sol";
import {Ownable2StepUpgradeable} from "@openzeppelin/contracts-upgradeable/access/Ownable2StepUpgradeable.sol";
import {ERC165Upgradeable} from "@openzeppelin/contracts-upgradeable/utils/introspection/ERC165Upgradeable.sol";

import {IAppAuth} from "./IAppAuth.sol";

/// @title KmsAuth: the governance root a dstack KMS consults before releasing keys.
/// @notice The owner decides which OS images may boot at all, which KMS
///         instances (by aggregated measurement and device) may join, and
///         which contract implements new apps; every app then decides its
///         own compose hashes and devices in its own DstackApp contract.
/// @dev Deployed behind an ERC1967 proxy; upgrades are UUPS and owner-only.
contract DstackKms is Initializable, Ownable2StepUpgradeable, UUPSUpgradeable, ERC165Upgradeable, IAppAuth {
    /// @notice The KMS's public identity as published on chain.
    struct KmsInfo {
        bytes k256Pubkey;
        bytes caPubkey;
        bytes quote;
        bytes eventlog;
    }

    // Storage order is upstream's, so a proxy first deployed from upstream's
    // implementation can be upgraded to this one and back.

    /// @notice The KMS identity (root keys and the quote that vouches for them).
    KmsInfo public kmsInfo;
    /// @notice The app id of the dstack-gateway this KMS trusts.
    /// @custom:oz-renamed-from tproxyAppId
    string public gatewayAppId;
    /// @notice Apps known to this KMS.
    mapping(address => bool) public registeredApps;
    /// @notice Aggregated measurements a KMS instance may boot with.
    mapping(bytes32 => bool) public kmsAllowedAggregatedMrs;
    /// @notice Devices a KMS instance may boot on.
    mapping(bytes32 => bool) public kmsAllowedDeviceIds;
    /// @notice OS images any CVM (app or KMS) may boot.
    mapping(bytes32 => bool) public allowedOsImages;
    /// @notice The DstackApp implementation the factory puts behind new proxies.
    address public appImplementation;

    /// @notice An app address was registered (deliberately not indexed: existing indexers read it as data).
    event AppRegistered(address appId);
    /// @notice The KMS identity was replaced.
    event KmsInfoSet(bytes k256Pubkey);
    /// @notice A KMS aggregated measurement became allowed.
    event KmsAggregatedMrAdded(bytes32 mrAggregated);
    /// @notice A KMS aggregated measurement is no longer allowed.
    event KmsAggregatedMrRemoved(bytes32 mrAggregated);
    /// @notice A KMS device became allowed.
    event KmsDeviceAdded(bytes32 deviceId);
    /// @notice A KMS device is no longer allowed.
    event KmsDeviceRemoved(bytes32 deviceId);
    /// @notice An OS image became allowed.
    event OsImageHashAdded(bytes32 osImageHash);
    /// @notice An OS image is no longer allowed.
    event OsImageHashRemoved(bytes32 osImageHash);
    /// @notice The trusted gateway app id changed.
    event GatewayAppIdSet(string gatewayAppId);
    /// @notice The factory's DstackApp implementation changed.
    event AppImplementationSet(address implementation);
    /// @notice The factory deployed and registered an app.
    event AppDeployedViaFactory(address indexed appId, address indexed deployer);
    /// @notice One audit record per policy change, so the whole policy can be
    ///         rebuilt from logs. `policy` is keccak256 of a fixed name
    ///         ("os-image", "kms-device", ...); `value` is the bytes32 value, a
    ///         left-padded address, or keccak256 of dynamic data.
    event PolicyChanged(address indexed actor, bytes32 indexed policy, bytes32 indexed value, bool enabled);

    /// @custom:oz-upgrades-unsafe-allow constructor
    constructor() {
        // The implementation itself must never be initialised: only proxies are.
        _disableInitializers();
    }

    /// @notice Set the owner and, when non-zero, the factory's app implementation.
    function initialize(address initialOwner, address _appImplementation) public initializer {
        __Ownable_init(initialOwner);
        __ERC165_init();
        if (_appImplementation != address(0)) {
            _setAppImplementation(_appImplementation);
        }
    }

    /// @inheritdoc IERC165
    function supportsInterface(bytes4 interfaceId)
        public
        view
        virtual
        override(ERC165Upgradeable, IERC165)
        returns (bool)
    {
        return interfaceId == type(IAppAuth).interfaceId || super.supportsInterface(interfaceId);
    }

    /// @notice Replace the whole KMS identity.
    function setKmsInfo(KmsInfo memory info) external onlyOwner {
        kmsInfo = info;
        emit KmsInfoSet(info.k256Pubkey);
        _policy("kms-info", keccak256(info.k256Pubkey), true);
    }

    /// @notice Replace only the quote of the KMS identity.
    function setKmsQuote(bytes memory quote) external onlyOwner {
        kmsInfo.quote = quote;
    }

    /// @notice Replace only the event log of the KMS identity.
    function setKmsEventlog(bytes memory eventlog) external onlyOwner {
        kmsInfo.eventlog = eventlog;
    }

    /// @notice Set the app id of the gateway this KMS trusts.
    function setGatewayAppId(string memory appId) external onlyOwner {
        gatewayAppId = appId;
        emit GatewayAppIdSet(appId);
        _policy("gateway-app-id", keccak256(bytes(appId)), true);
    }

    /// @notice Mark `appId` as an app of this KMS.
    /// @dev Open to anyone, as upstream: registration grants nothing by itself,
    ///      since boots still need an owner-allowed OS image and the app
    ///      contract's own approval.
    function registerApp(address appId) public {
        require(appId != address(0), "Invalid app ID");
        registeredApps[appId] = true;
        emit AppRegistered(appId);
        _policy("registered-app", _addressWord(appId), true);
    }

    /// @notice Set the DstackApp implementation the factory uses.
    function setAppImplementation(address _implementation) external onlyOwner {
        require(_implementation != address(0), "Invalid implementation address");
        _setAppImplementation(_implementation);
    }

    /// @notice Deploy a DstackApp proxy, initialise it and register it, in one transaction.
    /// @return appId the new app's address (its dstack app id)
    function deployAndRegisterApp(
        address initialOwner,
        bool disableUpgrades,
        bool requireTcbUpToDate,
        bool allowAnyDevice,
        bytes32 initialDeviceId,
        bytes32 initialComposeHash
    ) public returns (address appId) {
        require(appImplementation != address(0), "DstackApp implementation not set");
        require(initialOwner != address(0), "Invalid owner address");
        // Encoded by signature rather than by interface: the app
        // implementation has two `initialize` overloads.
        bytes memory init = abi.encodeWithSignature(
            "initialize(address,bool,bool,bool,bytes32,bytes32)",
            initialOwner,
            disableUpgrades,
            requireTcbUpToDate,
            allowAnyDevice,
            initialDeviceId,
            initialComposeHash
        );
        appId = address(new ERC1967Proxy(appImplementation, init));
        registerApp(appId);
        emit AppDeployedViaFactory(appId, msg.sender);
    }

    /// @notice The factory as callers before the TCB flag know it (requireTcbUpToDate = false).
    /// @return appId the new app's address
    function deployAndRegisterApp(
        address initialOwner,
        bool disableUpgrades,
        bool allowAnyDevice,
        bytes32 initialDeviceId,
        bytes32 initialComposeHash
    ) external returns (address appId) {
        return deployAndRegisterApp(
            initialOwner, disableUpgrades, false, allowAnyDevice, initialDeviceId, initialComposeHash
        );
    }

    /// @notice Allow a KMS aggregated measurement.
    function addKmsAggregatedMr(bytes32 mrAggregated) external onlyOwner {
        kmsAllowedAggregatedMrs[mrAggregated] = true;
        emit KmsAggregatedMrAdded(mrAggregated);
        _policy("kms-aggregated-mr", mrAggregated, true);
    }

    /// @notice Disallow a KMS aggregated measurement.
    function removeKmsAggregatedMr(bytes32 mrAggregated) external onlyOwner {
        kmsAllowedAggregatedMrs[mrAggregated] = false;
        emit KmsAggregatedMrRemoved(mrAggregated);
        _policy("kms-aggregated-mr", mrAggregated, false);
    }

    /// @notice Allow a KMS device.
    function addKmsDevice(bytes32 deviceId) external onlyOwner {
        kmsAllowedDeviceIds[deviceId] = true;
        emit KmsDeviceAdded(deviceId);
        _policy("kms-device", deviceId, true);
    }

    /// @notice Disallow a KMS device.
    function removeKmsDevice(bytes32 deviceId) external onlyOwner {
        kmsAllowedDeviceIds[deviceId] = false;
        emit KmsDeviceRemoved(deviceId);
        _policy("kms-device", deviceId, false);
    }

    /// @notice Allow an OS image.
    function addOsImageHash(bytes32 osImageHash) external onlyOwner {
        allowedOsImages[osImageHash] = true;
        emit OsImageHashAdded(osImageHash);
        _policy("os-image", osImageHash, true);
    }

    /// @notice Disallow an OS image.
    function removeOsImageHash(bytes32 osImageHash) external onlyOwner {
        allowedOsImages[osImageHash] = false;
        emit OsImageHashRemoved(osImageHash);
        _policy("os-image", osImageHash, false);
    }

    /// @notice Whether a KMS instance may boot and receive the root keys.
    /// @return isAllowed true when every check passes
    /// @return reason the first failed check
    function isKmsAllowed(AppBootInfo calldata bootInfo) external view returns (bool isAllowed, string memory reason) {
        // A KMS holds every app's root keys: unlike apps, it may never run on
        // a platform with outstanding TCB updates.
        if (!_isUpToDate(bootInfo.tcbStatus)) {
            return (false, "TCB status is not up to date");
        }
        if (!allowedOsImages[bootInfo.osImageHash]) {
            return (false, "OS image is not allowed");
        }
        if (!kmsAllowedAggregatedMrs[bootInfo.mrAggregated]) {
            return (false, "Aggregated MR not allowed");
        }
        if (!kmsAllowedDeviceIds[bootInfo.deviceId]) {
            return (false, "KMS is not allowed to boot on this device");
        }
        return (true, "");
    }

    /// @inheritdoc IAppAuth
    function isAppAllowed(AppBootInfo calldata bootInfo)
        external
        view
        override
        returns (bool isAllowed, string memory reason)
    {
        if (!registeredApps[bootInfo.appId]) {
            return (false, "App not registered");
        }
        if (!allowedOsImages[bootInfo.osImageHash]) {
            return (false, "OS image is not allowed");
        }
        // Anyone may register any address, so a registered app may still be
        // an account without code; calling it would revert instead of answering.
        if (bootInfo.appId.code.length == 0) {
            return (false, "App not deployed or invalid address");
        }
        return IAppAuth(bootInfo.appId).isAppAllowed(bootInfo);
    }

    function _authorizeUpgrade(address newImplementation) internal override onlyOwner {
        _policy("implementation-upgrade", _addressWord(newImplementation), true);
    }

    function _setAppImplementation(address implementation) private {
        appImplementation = implementation;
        emit AppImplementationSet(implementation);
        _policy("app-implementation", _addressWord(implementation), true);
    }

    function _policy(string memory name, bytes32 value, bool enabled) private {
        emit PolicyChanged(msg.sender, keccak256(bytes(name)), value, enabled);
    }

    function _addressWord(address a) private pure returns (bytes32) {
        return bytes32(uint256(uint160(a)));
    }

    function _isUpToDate(string calldata tcbStatus) private pure returns (bool) {
        return keccak256(bytes(tcbStatus)) == keccak256("UpToDate");
    }

    // Room for later versions to add state without moving a slot.
    uint256[50] private __gap;
}
