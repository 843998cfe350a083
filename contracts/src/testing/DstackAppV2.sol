// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackApp} from "../DstackApp.sol";

/// @title Test-only next version of DstackApp: same storage, one new function.
contract DstackAppV2 is DstackApp {
    /// @notice Proves that calls reach the new implementation.
    function upgradeMarker() external pure returns (string memory) {
        return "DstackAppV2";
    }
}
