//! What can go wrong talking to the cluster.

use std::time::Duration;

/// An operation on the shared state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The endpoints, namespace, key or TLS settings cannot be used.
    #[error("invalid cluster configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// etcd refused the request, or failed in a way that retrying does not fix.
    #[error("etcd {op}{} failed", of_key(key))]
    Etcd {
        /// The operation (get, put, txn, watch, ...).
        op: &'static str,
        /// The key (without the namespace) or prefix; empty for cluster-wide calls.
        key: String,
        /// etcd's or the transport's error.
        #[source]
        source: etcd_client::Error,
    },
    /// No member answered in time, retries included.
    #[error("etcd {op}{} got no answer within {after:?}", of_key(key))]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The key (without the namespace) or prefix.
        key: String,
        /// The request timeout that ran out.
        after: Duration,
    },
    /// A stored value does not open with the seal key under its own key:
    /// modified, moved from another key, written by someone without the
    /// seal key, or sealed with a different key.
    #[error(
        "the value of {key:?} fails authentication (tampered, moved, or sealed with another key)"
    )]
    Tampered {
        /// The key (without the namespace).
        key: String,
    },
    /// An authentic value is not the type the caller asked for (a schema
    /// change between replica versions), or a value cannot be encoded.
    #[error("the value of {key:?} is not the expected type")]
    Encoding {
        /// The key (without the namespace).
        key: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The lease a value was to be attached to has expired or was revoked.
    #[error("lease {lease:x} has expired or was revoked")]
    LeaseLost {
        /// The lease id.
        lease: i64,
    },
    /// Another replica held the lock for the whole wait.
    #[error("lock {name:?} still held by another replica after {waited:?}")]
    LockTimeout {
        /// The lock's name.
        name: String,
        /// How long this call waited.
        waited: Duration,
    },
}

/// ` of "key"`, or nothing for calls about the whole cluster.
fn of_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" of {key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_key_when_there_is_one() {
        let timeout = |key: &str| KvError::Timeout {
            op: "get",
            key: key.into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(
            timeout("apps/a").to_string(),
            "etcd get of \"apps/a\" got no answer within 1s"
        );
        assert_eq!(timeout("").to_string(), "etcd get got no answer within 1s");
    }
}
