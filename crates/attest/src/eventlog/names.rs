//! The names of the runtime events dstack measures into RTMR3 at boot, in
//! boot order (UPSTREAM.md §2.2). Verifiers look events up by these names,
//! so they are wire format.

/// First event: the system begins measuring the app.
pub const SYSTEM_PREPARING: &str = "system-preparing";
/// 20-byte app-id.
pub const APP_ID: &str = "app-id";
/// 32-byte SHA-256 of the exact `app-compose.json` bytes.
pub const COMPOSE_HASH: &str = "compose-hash";
/// 20-byte instance-id, or empty with `no_instance_id`.
pub const INSTANCE_ID: &str = "instance-id";
/// The boot-time identity measurements are complete.
pub const BOOT_MR_DONE: &str = "boot-mr-done";
/// The KMS's `mr_aggregated` (v0.5.11 KMS mode only).
pub const MR_KMS: &str = "mr-kms";
/// The OS image hash the KMS returned (KMS mode only).
pub const OS_IMAGE_HASH: &str = "os-image-hash";
/// Compact JSON `{"name":..,"id":..}` naming the key provider.
pub const KEY_PROVIDER: &str = "key-provider";
/// ASCII name of the data filesystem (`ext4`).
pub const STORAGE_FS: &str = "storage-fs";
/// Last boot event; events after it are the app's.
pub const SYSTEM_READY: &str = "system-ready";
