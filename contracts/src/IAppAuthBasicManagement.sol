// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";

/// @title The allow-list management every app contract offers to tools.
/// @notice ERC-165 interface id 0x8fd37527. Each call must revert for an
///         unauthorised caller and emit its event on success.
interface IAppAuthBasicManagement is IERC165 {
    /// @notice A compose hash became allowed.
    event ComposeHashAdded(bytes32 composeHash);
    /// @notice A compose hash is no longer allowed.
    event ComposeHashRemoved(bytes32 composeHash);
    /// @notice A device id became allowed.
    event DeviceAdded(bytes32 deviceId);
    /// @notice A device id is no longer allowed.
    event DeviceRemoved(bytes32 deviceId);

    /// @notice Allow CVMs whose app-compose.json hashes to `composeHash`.
    function addComposeHash(bytes32 composeHash) external;

    /// @notice Stop allowing `composeHash`.
    function removeComposeHash(bytes32 composeHash) external;

    /// @notice Allow CVMs running on `deviceId`.
    function addDevice(bytes32 deviceId) external;

    /// @notice Stop allowing `deviceId`.
    function removeDevice(bytes32 deviceId) external;
}
