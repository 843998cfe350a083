//! Support for the end-to-end tests and the demo: example images, the local
//! registry, and a supervisor running in a scratch state directory.
#![allow(missing_docs)]

pub mod gateway;
pub mod harness;
pub mod kms;
pub mod oci;
