//! One module per command group.

pub(crate) mod chain;
pub(crate) mod image;
pub(crate) mod kms;
pub(crate) mod quote;
pub(crate) mod verify;
pub(crate) mod vm;

/// How a command failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Evidence was checked and refused: a one-line reason.
    Rejected(String),
    /// An operation failed (e.g. a VM did not boot): a one-line reason.
    Failed(String),
    /// Input could not be read or understood.
    BadInput(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::BadInput(err)
    }
}

pub(crate) use dstack_proto::error_chain;
