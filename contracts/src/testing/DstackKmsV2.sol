// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackKms} from "../DstackKms.sol";

/// @title Test-only next version of DstackKms: same storage, one new function.
contract DstackKmsV2 is DstackKms {
    /// @notice Proves that calls reach the new implementation.
    function upgradeMarker() external pure returns (string memory) {
        return "DstackKmsV2";
    }
}
