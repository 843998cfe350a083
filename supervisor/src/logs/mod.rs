//! Per-VM logs: `serial.log` (the console, raw) and `app.log` (guest log
//! lines as JSON lines), each rotated at 4 MiB into `.1`–`.3`; and reading
//! them back for `GET /v1/vms/{vm}/logs`, with tail and follow.

mod read;
mod rotate;

pub use read::{DEFAULT_LINES, LogQuery, LogStream, open_stream};
pub use rotate::{KEEP_ROTATED, RotatingLog, rotated_paths};
