// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {UUPSUpgradeable} from "@openzeppelin/contracts/proxy/utils/UUPSUpgradeable.sol";
import {Initializable} from "@openzeppelin/contracts-upgradeable/proxy/utils/Initializable.sol";
import {Ownable2StepUpgradeable} from "@openzeppelin/contracts-upgradeable/access/Ownable2StepUpgradeable.sol";
import {ERC165Upgradeable} from "@openzeppelin/contracts-upgradeable/utils/introspection/ERC165Upgradeable.sol";

import {IAppAuth} from "./IAppAuth.sol";
import {IAppAuthBasicManagement} from "./IAppAuthBasicManagement.sol";

/// @title AppAuth: one app's boot policy, owned by the app's developer.
/// @notice Its address is the app id. The owner lists the compose hashes
///         (app versions) and devices the app may boot with; the KMS asks
///         `isAppAllowed` after its own checks pass.
/// @dev Behind an ERC1967 proxy; UUPS upgrades by the owner until the owner
///      disables them for good.
contract DstackApp is
    Initializable,
    Ownable2StepUpgradeable,
    UUPSUpgradeable,
    ERC165Upgradeable,
    IAppAuth,
    IAppAuthBasicManagement
{
    // Storage order is upstream's (see DstackKms).

    /// @notice Compose hashes this app may boot with.
    mapping(bytes32 => bool) public allowedComposeHashes;
    bool private _upgradesDisabled;
    /// @notice When true, any device may boot the app and `allowedDeviceIds` is ignored.
    bool public allowAnyDevice;
    /// @notice Devices the app may boot on (unless `allowAnyDevice`).
    mapping(bytes32 => bool) public allowedDeviceIds;
    /// @notice When true, only platforms whose TCB status is UpToDate may boot the app.
    bool public requireTcbUpToDate;

    /// @notice Upgrades were turned off; this cannot be undone.
    event UpgradesDisabled();
    /// @notice `allowAnyDevice` changed.
    event AllowAnyDeviceSet(bool allowAny);
    /// @notice `requireTcbUpToDate` changed.
    event RequireTcbUpToDateSet(bool requireUpToDate);
    /// @notice Audit record per policy change (same shape and names as DstackKms's).
    event PolicyChanged(address indexed actor, bytes32 indexed policy, bytes32 indexed value, bool enabled);

    /// @custom:oz-upgrades-unsafe-allow constructor
    constructor() {
        _disableInitializers();
    }

    /// @notice Initialise without the TCB flag (requireTcbUpToDate = false), as older factories call it.
    function initialize(
        address initialOwner,
        bool _disableUpgrades,
        bool _allowAnyDevice,
        bytes32 initialDeviceId,
        bytes32 initialComposeHash
    ) public initializer {
        _init(initialOwner, _disableUpgrades, false, _allowAnyDevice, initialDeviceId, initialComposeHash);
    }

    /// @notice Set the owner, the flags and optionally a first device and compose hash (zero means none).
    function initialize(
        address initialOwner,
        bool _disableUpgrades,
        bool _requireTcbUpToDate,
        bool _allowAnyDevice,
        bytes32 initialDeviceId,
        bytes32 initialComposeHash
    ) public initializer {
        _init(initialOwner, _disableUpgrades, _requireTcbUpToDate, _allowAnyDevice, initialDeviceId, initialComposeHash);
    }

    /// @notice The implementation's revision, as upstream numbers it.
    function version() public pure returns (uint256) {
        return 2;
    }

    /// @inheritdoc IERC165
    function supportsInterface(bytes4 interfaceId)
        public
        view
        virtual
        override(ERC165Upgradeable, IERC165)
        returns (bool)
    {
        return interfaceId == type(IAppAuth).interfaceId || interfaceId == type(IAppAuthBasicManagement).interfaceId
            || super.supportsInterface(interfaceId);
    }

    /// @inheritdoc IAppAuthBasicManagement
    function addComposeHash(bytes32 composeHash) external onlyOwner {
        allowedComposeHashes[composeHash] = true;
        emit ComposeHashAdded(composeHash);
        _policy("compose-hash", composeHash, true);
    }

    /// @inheritdoc IAppAuthBasicManagement
    function removeComposeHash(bytes32 composeHash) external onlyOwner {
        allowedComposeHashes[composeHash] = false;
        emit ComposeHashRemoved(composeHash);
        _policy("compose-hash", composeHash, false);
    }

    /// @inheritdoc IAppAuthBasicManagement
    function addDevice(bytes32 deviceId) external onlyOwner {
        allowedDeviceIds[deviceId] = true;
        emit DeviceAdded(deviceId);
        _policy("device", deviceId, true);
    }

    /// @inheritdoc IAppAuthBasicManagement
    function removeDevice(bytes32 deviceId) external onlyOwner {
        allowedDeviceIds[deviceId] = false;
        emit DeviceRemoved(deviceId);
        _policy("device", deviceId, false);
    }

    /// @notice Let any device (true) or only listed devices (false) boot the app.
    function setAllowAnyDevice(bool _allowAnyDevice) external onlyOwner {
        allowAnyDevice = _allowAnyDevice;
        emit AllowAnyDeviceSet(_allowAnyDevice);
        _policy("allow-any-device", bytes32(0), _allowAnyDevice);
    }

    /// @notice Require (true) or not (false) an UpToDate TCB status.
    function setRequireTcbUpToDate(bool _requireUpToDate) external onlyOwner {
        requireTcbUpToDate = _requireUpToDate;
        emit RequireTcbUpToDateSet(_requireUpToDate);
        _policy("require-tcb-up-to-date", bytes32(0), _requireUpToDate);
    }

    /// @notice Turn off upgrades of this app's contract, permanently.
    function disableUpgrades() external onlyOwner {
        _upgradesDisabled = true;
        emit UpgradesDisabled();
        _policy("upgrades-disabled", bytes32(0), true);
    }

    /// @inheritdoc IAppAuth
    function isAppAllowed(AppBootInfo calldata bootInfo)
        external
        view
        override
        returns (bool isAllowed, string memory reason)
    {
        if (requireTcbUpToDate && keccak256(bytes(bootInfo.tcbStatus)) != keccak256("UpToDate")) {
            return (false, "TCB status is not up to date");
        }
        if (!allowedComposeHashes[bootInfo.composeHash]) {
            return (false, "Compose hash not allowed");
        }
        if (!allowAnyDevice && !allowedDeviceIds[bootInfo.deviceId]) {
            return (false, "Device not allowed");
        }
        return (true, "");
    }

    function _init(
        address initialOwner,
        bool _disableUpgrades,
        bool _requireTcbUpToDate,
        bool _allowAnyDevice,
        bytes32 initialDeviceId,
        bytes32 initialComposeHash
    ) private {
        require(initialOwner != address(0), "invalid owner address");
        _upgradesDisabled = _disableUpgrades;
        allowAnyDevice = _allowAnyDevice;
        requireTcbUpToDate = _requireTcbUpToDate;
        if (initialDeviceId != bytes32(0)) {
            allowedDeviceIds[initialDeviceId] = true;
            emit DeviceAdded(initialDeviceId);
            _policy("device", initialDeviceId, true);
        }
        if (initialComposeHash != bytes32(0)) {
            allowedComposeHashes[initialComposeHash] = true;
            emit ComposeHashAdded(initialComposeHash);
            _policy("compose-hash", initialComposeHash, true);
        }
        __Ownable_init(initialOwner);
        __ERC165_init();
    }

    function _authorizeUpgrade(address newImplementation) internal override onlyOwner {
        require(!_upgradesDisabled, "Upgrades are permanently disabled");
        _policy("implementation-upgrade", bytes32(uint256(uint160(newImplementation))), true);
    }

    function _policy(string memory name, bytes32 value, bool enabled) private {
        emit PolicyChanged(msg.sender, keccak256(bytes(name)), value, enabled);
    }

    // Room for later versions to add state without moving a slot.
    uint256[49] private __gap;
}
