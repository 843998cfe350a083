// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";

/// @title Boot authorisation for one dstack app (or for the KMS itself).
/// @notice ERC-165 interface id 0x1e079198 (the selector of isAppAllowed).
/// @dev The struct layout is part of the ABI that dstack's KMS, its auth-eth
///      webhook and the SDKs encode: keep the field order and types as they are.
interface IAppAuth is IERC165 {
    /// @notice What the KMS learnt from a verified quote and event log.
    /// @param appId the app's contract address (dstack's app-id)
    /// @param composeHash sha256 of the app-compose.json bytes
    /// @param instanceId the CVM instance id (zero when the app has none)
    /// @param deviceId the platform's device id
    /// @param mrAggregated digest over MRTD, RTMR0-3 and the config
    /// @param mrSystem digest over the boot chain measurements only
    /// @param osImageHash digest of the OS image
    /// @param tcbStatus the quote's TCB status as the verifier reported it
    /// @param advisoryIds Intel security advisories that apply to the platform
    struct AppBootInfo {
        address appId;
        bytes32 composeHash;
        address instanceId;
        bytes32 deviceId;
        bytes32 mrAggregated;
        bytes32 mrSystem;
        bytes32 osImageHash;
        string tcbStatus;
        string[] advisoryIds;
    }

    /// @notice Whether a CVM described by `bootInfo` may receive its keys.
    /// @return isAllowed true to release keys
    /// @return reason why not (empty when allowed)
    function isAppAllowed(AppBootInfo calldata bootInfo) external view returns (bool isAllowed, string memory reason);
}
