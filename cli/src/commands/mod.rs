//! One module per command group.

pub(crate) mod image;
pub(crate) mod quote;
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

/// An error and its causes on one line: "outer: cause: root cause".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
