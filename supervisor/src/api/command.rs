//! What the HTTP layer asks of the VMM: one [`Command`] per request, one
//! [`Reply`] per answer (Firecracker's `VmmAction`, STYLE rule 10).

use std::future::Future;

use bytes::Bytes;
use dstack_proto::kms::{GetMetaResponse, PublicKeyResponse};
use dstack_proto::supervisor::{
    DeployRequest, EnvKeyRequest, ImageInfo, KmsMetaRequest, LogChannel, Version, VmInfo, VmSummary,
};

use crate::error::VmmError;
use crate::logs::{LogQuery, LogStream};

/// A parsed API request. `vm` fields are an id or a name, as given.
#[derive(Debug)]
pub enum Command {
    /// `GET /v1/version`.
    Version,
    /// `PUT /v1/blobs/sha256/{sha256}`: a blob for a coming deploy.
    PutBlob {
        /// Its name: the SHA-256 hex its bytes must hash to.
        sha256: String,
        /// The bytes.
        bytes: BlobBytes,
    },
    /// `POST /v1/vms`.
    Deploy(DeployRequest),
    /// `GET /v1/vms`.
    List,
    /// `GET /v1/vms/{vm}`.
    Get(String),
    /// `POST /v1/vms/{vm}/start[?format_nonempty_disk=true]`.
    Start {
        /// The VM.
        vm: String,
        /// Let this boot's guest format a data disk that holds something
        /// other than zeros or a LUKS header (one-shot).
        format_nonempty_disk: bool,
    },
    /// `POST /v1/vms/{vm}/stop[?force=true]`.
    Stop {
        /// The VM.
        vm: String,
        /// Kill QEMU at once instead of asking the guest and ACPI first.
        force: bool,
    },
    /// `DELETE /v1/vms/{vm}[?force=true]`.
    Remove {
        /// The VM.
        vm: String,
        /// Kill QEMU at once instead of stopping it gracefully.
        force: bool,
    },
    /// `GET /v1/vms/{vm}/logs`.
    Logs {
        /// The VM.
        vm: String,
        /// What to read.
        query: LogQuery,
    },
    /// `GET /v1/images`.
    Images,
    /// `POST /v1/env-key`: the KMS's env public key for an app, relayed.
    EnvKey(EnvKeyRequest),
    /// `POST /v1/kms-meta`: the KMS's `GetMeta`, relayed.
    KmsMeta(KmsMetaRequest),
}

/// A blob's bytes; `Debug` shows their length only (a log line of a
/// command must not dump a 64 MiB context).
pub struct BlobBytes(pub Bytes);

impl std::fmt::Debug for BlobBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// The VMM's answer to a [`Command`].
pub enum Reply {
    /// For [`Command::Version`].
    Version(Version),
    /// A new VM (201).
    Created(VmInfo),
    /// One VM.
    Vm(VmInfo),
    /// Every VM.
    Vms(Vec<VmSummary>),
    /// The VM and all its files are gone (204).
    Removed,
    /// The blob is stored (204).
    BlobStored,
    /// A log, streamed.
    Logs {
        /// Which log (decides the content type).
        channel: LogChannel,
        /// The text.
        body: LogStream,
    },
    /// The OS images.
    Images(Vec<ImageInfo>),
    /// The KMS's `GetAppEnvEncryptPubKey` answer, unchanged.
    EnvKey(PublicKeyResponse),
    /// The KMS's `GetMeta` answer, unchanged.
    KmsMeta(Box<GetMetaResponse>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Version(v) => f.debug_tuple("Version").field(v).finish(),
            Reply::Created(v) => f.debug_tuple("Created").field(v).finish(),
            Reply::Vm(v) => f.debug_tuple("Vm").field(v).finish(),
            Reply::Vms(v) => f.debug_tuple("Vms").field(v).finish(),
            Reply::Removed => f.write_str("Removed"),
            Reply::BlobStored => f.write_str("BlobStored"),
            Reply::Logs { channel, .. } => {
                f.debug_struct("Logs").field("channel", channel).finish()
            }
            Reply::Images(v) => f.debug_tuple("Images").field(v).finish(),
            Reply::EnvKey(v) => f.debug_tuple("EnvKey").field(v).finish(),
            Reply::KmsMeta(v) => f.debug_tuple("KmsMeta").field(v).finish(),
        }
    }
}

/// Executes commands. The HTTP layer depends on nothing else, so it can be
/// tested (and fuzzed) against a stub.
pub trait RequestHandler: Send + Sync + 'static {
    /// Runs one command.
    fn handle(&self, command: Command) -> impl Future<Output = Result<Reply, VmmError>> + Send;
}
