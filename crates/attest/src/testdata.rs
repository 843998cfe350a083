//! Locating the shared test fixtures (real quotes, collateral, a CCEL table).
//!
//! The fixtures live outside the workspace in `shared/testdata`, so tests find
//! them through `DSTACK_TESTDATA` or the directory layout, and fail loudly when
//! neither works: a test that silently skips would hide a broken checkout.
#![cfg(test)]

use std::path::PathBuf;

/// Path of the fixture `name`; panics if the testdata directory is missing.
pub(crate) fn testdata_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("DSTACK_TESTDATA") {
        Some(dir) => PathBuf::from(dir),
        // The manifest dir cargo gives the running test, before the one
        // compiled in: a target dir shared by two checkouts can hold a
        // build of the other.
        None => std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
            .join("../../../shared/testdata"),
    };
    assert!(
        dir.is_dir(),
        "testdata not found: set DSTACK_TESTDATA to the shared/testdata directory (tried {})",
        dir.display()
    );
    dir.join(name)
}

/// Contents of the fixture `name`; panics if it cannot be read.
pub(crate) fn read_testdata(name: &str) -> Vec<u8> {
    let path = testdata_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read testdata {}: {e}", path.display()))
}
