//! The client: connecting, retrying across members, and sealed reads and
//! writes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tonic::Code;
use zeroize::Zeroizing;

use crate::error::KvError;
use crate::lease::Lease;
use crate::seal::{SealKey, Sealer};

/// Where user keys live under the namespace; locks live beside them, so a
/// `list("")` never meets a lock record.
const DATA_DIR: &str = "kv/";
/// Where lock records live under the namespace.
const LOCK_DIR: &str = "lock/";
/// Entries per page of a list: a page of sealed certificates stays far below
/// the decoding limit even with large values.
const PAGE: i64 = 64;
/// Largest response decoded: etcd values may be up to 1.5 MiB each.
const MAX_DECODE: usize = 128 << 20;
/// Retry pacing: short at first (a dead member fails fast), capped so a
/// failover does not wait long after the cluster recovers.
const BACKOFF_START: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How to reach the cluster and how long to try.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Limit for one TCP (and TLS) connect to one member; default 2 s.
    pub connect_timeout: Duration,
    /// Limit for a whole operation, retries on other members included;
    /// default 10 s.
    pub request_timeout: Duration,
    /// Limit for one attempt on one member, after which the call is retried;
    /// default 3 s. A write sent through a follower just as the leader dies
    /// hangs in etcd until this runs out, so it bounds the stall of a
    /// leader failover.
    pub attempt_timeout: Duration,
    /// HTTP/2 ping interval, to notice a member that vanished silently;
    /// default 5 s.
    pub keep_alive_interval: Duration,
    /// How long an HTTP/2 ping may go unanswered; default 5 s.
    pub keep_alive_timeout: Duration,
    /// TLS for `https://` endpoints; `None` for plain `http://`.
    pub tls: Option<TlsConfig>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// TLS to etcd: the CA that signed the members' certificates and, for
/// etcd's `--client-cert-auth`, a client certificate.
#[derive(Clone)]
pub struct TlsConfig {
    /// PEM of the CA (or CAs) trusted for the members' certificates.
    pub ca_pem: Vec<u8>,
    /// Client certificate and key, for clusters that require one.
    pub identity: Option<ClientIdentity>,
    /// Name checked against the members' certificates instead of the
    /// endpoint's host.
    pub domain_name: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("identity", &self.identity)
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM; zeroized on drop.
    pub key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// One stored value with its key and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// The key, without the namespace.
    pub key: String,
    /// The opened value.
    pub value: T,
    /// The revision that last wrote it: the `expected_revision` of
    /// [`ClusterKv::compare_and_swap`].
    pub mod_revision: i64,
}

/// The values under a prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<T> {
    /// The entries, in key order.
    pub entries: Vec<Entry<T>>,
    /// The store revision they were read at; watch from `revision + 1` to
    /// miss nothing after it.
    pub revision: i64,
}

/// A handle on the sealed shared state under one namespace; cheap to clone.
#[derive(Clone)]
pub struct ClusterKv {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKv")
            .field("endpoints", &self.inner.endpoints)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    endpoints: Vec<String>,
    namespace: String,
    pub(crate) data_prefix: String,
    lock_prefix: String,
    pub(crate) sealer: Sealer,
    pub(crate) request_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
}

impl ClusterKv {
    /// Connects to the cluster through all `endpoints` (`http://host:port`,
    /// or `https://` with `options.tls`), with values sealed under `key` and
    /// every key stored under `namespace` (e.g. `/dstack-gateway/<app-id>/`,
    /// which must end in `/`). Fails unless some member answers.
    pub async fn connect(
        endpoints: &[String],
        namespace: &str,
        key: SealKey,
        options: ConnectOptions,
    ) -> Result<Self, KvError> {
        let config = |reason: String| KvError::Config { reason };
        if endpoints.is_empty() {
            return Err(config("no etcd endpoints".into()));
        }
        if namespace.is_empty() || !namespace.ends_with('/') {
            return Err(config(format!("namespace {namespace:?} must end in '/'")));
        }
        for endpoint in endpoints {
            let https = endpoint.starts_with("https://");
            if !https && !endpoint.starts_with("http://") {
                return Err(config(format!(
                    "endpoint {endpoint:?} is not http://HOST:PORT or https://HOST:PORT"
                )));
            }
            // etcd-client would otherwise fall back to an empty root store
            // (https) or refuse (http with TLS) only at the first request.
            if https != options.tls.is_some() {
                return Err(config(format!(
                    "endpoint {endpoint:?}: https:// endpoints need TLS options and http:// ones must have none"
                )));
            }
        }

        let mut etcd_options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.keep_alive_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader answers (and cancels watches)
            // at once instead of hanging, so the call moves to another member.
            .with_require_leader(true);
        if let Some(tls) = &options.tls {
            etcd_options = etcd_options.with_tls(tls_options(tls));
        }
        let client = Client::connect(endpoints, Some(etcd_options))
            .await
            .map_err(|source| KvError::Etcd {
                op: "connect",
                key: String::new(),
                source,
            })?;

        let kv = Self {
            inner: Arc::new(Inner {
                client,
                endpoints: endpoints.to_vec(),
                namespace: namespace.to_owned(),
                data_prefix: format!("{namespace}{DATA_DIR}"),
                lock_prefix: format!("{namespace}{LOCK_DIR}"),
                sealer: Sealer::new(&key),
                request_timeout: options.request_timeout,
                attempt_timeout: options.attempt_timeout,
            }),
        };
        // The channel connects lazily: make sure someone is there.
        kv.inner
            .call("status", "", |mut c| async move { c.status().await })
            .await?;
        Ok(kv)
    }

    /// The namespace every key is stored under.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The etcd key that holds `key`. Key names are stored in the clear:
    /// etcd's host sees them, so keep secrets out of them.
    pub fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.data_prefix)
    }

    /// Reads and opens the value of `key`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, KvError> {
        Ok(self.get_entry(key).await?.map(|entry| entry.value))
    }

    /// Reads and opens the value of `key`, with its revision.
    pub async fn get_entry<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Entry<T>>, KvError> {
        check_key(key)?;
        let etcd_key = self.etcd_key(key);
        let mut resp = self
            .inner
            .call("get", key, |mut c| {
                let etcd_key = etcd_key.clone();
                async move { c.get(etcd_key, None).await }
            })
            .await?;
        match resp.take_kvs().first() {
            Some(kv) => Ok(Some(self.inner.open_entry(kv)?)),
            None => Ok(None),
        }
    }

    /// Seals and writes `value` under `key`, replacing any value.
    pub async fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), KvError> {
        self.put_with(key, value, None).await
    }

    /// Writes `value` under `key` attached to `lease`: it vanishes when the
    /// lease ends, i.e. when its writer stops or dies (connection counts,
    /// last-seen times).
    pub async fn put_ephemeral<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: &Lease,
    ) -> Result<(), KvError> {
        self.put_with(key, value, Some(lease)).await
    }

    async fn put_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: Option<&Lease>,
    ) -> Result<(), KvError> {
        check_key(key)?;
        let lease_id = live_lease(lease)?;
        let etcd_key = self.etcd_key(key);
        let sealed = self.inner.seal(key, etcd_key.as_bytes(), value)?;
        // A retried put after an ambiguous failure only rewrites the same
        // value: puts are idempotent.
        self.inner
            .call("put", key, |mut c| {
                let (etcd_key, sealed) = (etcd_key.clone(), sealed.clone());
                let options = lease_id.map(|id| PutOptions::new().with_lease(id));
                async move { c.put(etcd_key, sealed, options).await }
            })
            .await
            .map_err(|e| lease_error(e, lease_id))?;
        Ok(())
    }

    /// Writes `value` under `key` only if `key` has no value; `false` when
    /// it has one (IP allocation, instance claims).
    pub async fn create<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<bool, KvError> {
        check_key(key)?;
        let etcd_key = self.etcd_key(key);
        let sealed = self.inner.seal(key, etcd_key.as_bytes(), value)?;
        let outcome = self
            .inner
            .create_raw(key, etcd_key.into_bytes(), sealed, None)
            .await?;
        Ok(outcome.created)
    }

    /// [`create`](Self::create), with the value attached to `lease`.
    pub async fn create_ephemeral<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: &Lease,
    ) -> Result<bool, KvError> {
        check_key(key)?;
        let lease_id = live_lease(Some(lease))?;
        let etcd_key = self.etcd_key(key);
        let sealed = self.inner.seal(key, etcd_key.as_bytes(), value)?;
        let outcome = self
            .inner
            .create_raw(key, etcd_key.into_bytes(), sealed, lease_id)
            .await?;
        Ok(outcome.created)
    }

    /// Writes `value` under `key` only if its value is still the one written
    /// at `expected_revision` ([`Entry::mod_revision`]; 0 for "no value");
    /// `false` when someone wrote or deleted it since. A repeat after a
    /// lost answer recognises this call's own write (each sealed value is
    /// unique), unless another writer already replaced it.
    pub async fn compare_and_swap<T: Serialize + ?Sized>(
        &self,
        key: &str,
        expected_revision: i64,
        value: &T,
    ) -> Result<bool, KvError> {
        check_key(key)?;
        let etcd_key = self.etcd_key(key);
        let sealed = self.inner.seal(key, etcd_key.as_bytes(), value)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                expected_revision,
            )])
            .and_then([TxnOp::put(etcd_key.clone(), sealed.clone(), None)])
            .or_else([TxnOp::get(etcd_key, None)]);
        let resp = self.inner.txn("compare-and-swap", key, txn).await?;
        Ok(resp.succeeded() || current_is(&resp, &sealed))
    }

    /// Deletes `key`; `false` when it had no value (or, rarely, when a
    /// first attempt deleted it but its answer was lost).
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        check_key(key)?;
        let etcd_key = self.etcd_key(key);
        let resp = self
            .inner
            .call("delete", key, |mut c| {
                let etcd_key = etcd_key.clone();
                async move { c.delete(etcd_key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes `key` only if its value is still the one written at
    /// `expected_revision`; `false` otherwise (or, rarely, when a first
    /// attempt deleted it but its answer was lost).
    pub async fn compare_and_delete(
        &self,
        key: &str,
        expected_revision: i64,
    ) -> Result<bool, KvError> {
        check_key(key)?;
        let etcd_key = self.etcd_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                expected_revision,
            )])
            .and_then([TxnOp::delete(etcd_key, None)]);
        Ok(self
            .inner
            .txn("compare-and-delete", key, txn)
            .await?
            .succeeded())
    }

    /// Reads and opens every value whose key starts with `prefix`, in key
    /// order. A value that does not open fails the whole call, naming its
    /// key: a tampered entry is never silently skipped.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<Entry<T>>, KvError> {
        Ok(self.snapshot(prefix).await?.entries)
    }

    /// [`list`](Self::list), with the revision it was read at, for a
    /// [`watch_from`](Self::watch_from) that misses nothing.
    pub async fn snapshot<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Snapshot<T>, KvError> {
        self.inner.snapshot(prefix).await
    }

    /// Grants a lease of `ttl` (rounded up to whole seconds; etcd may raise
    /// it to its minimum) that keeps itself alive until dropped or revoked.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease, KvError> {
        Lease::grant(self.inner.clone(), ttl).await
    }

    pub(crate) fn lock_key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.lock_prefix)
    }
}

impl Inner {
    /// Runs one etcd call with retries: on another member (the channel
    /// balances over all endpoints) after a transport failure, an unavailable
    /// member or a slow attempt, until `request_timeout`. Only errors that
    /// another attempt may cure are retried; callers make sure a repeat of
    /// a call that did land is harmless.
    pub(crate) async fn call<R, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: F,
    ) -> Result<R, KvError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<R, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut backoff = BACKOFF_START;
        loop {
            let limit = deadline
                .saturating_duration_since(Instant::now())
                .min(self.attempt_timeout);
            let last_error = match tokio::time::timeout(limit, attempt(self.client.clone())).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) if !is_transient(&e) => {
                    return Err(KvError::Etcd {
                        op,
                        key: key.to_owned(),
                        source: e,
                    });
                }
                Ok(Err(e)) => Some(e),
                Err(_elapsed) => None,
            };
            if Instant::now() + backoff >= deadline {
                return Err(match last_error {
                    Some(source) => KvError::Etcd {
                        op,
                        key: key.to_owned(),
                        source,
                    },
                    None => KvError::Timeout {
                        op,
                        key: key.to_owned(),
                        after: self.request_timeout,
                    },
                });
            }
            tracing::debug!(op, key, error = ?last_error, "etcd call failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    pub(crate) async fn txn(
        &self,
        op: &'static str,
        key: &str,
        txn: Txn,
    ) -> Result<TxnResponse, KvError> {
        self.call(op, key, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Puts `sealed` under `etcd_key` unless it exists. A repeat after an
    /// ambiguous failure finds its own value (the random nonce makes it
    /// unique) and still reports the key as created.
    pub(crate) async fn create_raw(
        &self,
        key: &str,
        etcd_key: Vec<u8>,
        sealed: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<CreateOutcome, KvError> {
        let txn = Txn::new()
            .when([Compare::version(etcd_key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                etcd_key.clone(),
                sealed.clone(),
                lease.map(|id| PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(etcd_key, None)]);
        let resp = self
            .txn("create", key, txn)
            .await
            .map_err(|e| lease_error(e, lease))?;
        let header_revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(CreateOutcome {
                created: true,
                revision: header_revision,
                header_revision,
            });
        }
        let current = current_kv(&resp);
        Ok(CreateOutcome {
            created: current
                .as_ref()
                .is_some_and(|kv| kv.value() == sealed.as_slice()),
            revision: current.as_ref().map_or(0, KeyValue::mod_revision),
            header_revision,
        })
    }

    pub(crate) fn seal<T: Serialize + ?Sized>(
        &self,
        key: &str,
        etcd_key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, KvError> {
        let plaintext =
            Zeroizing::new(
                serde_json::to_vec(value).map_err(|source| KvError::Encoding {
                    key: key.to_owned(),
                    source,
                })?,
            );
        Ok(self.sealer.seal(etcd_key, &plaintext))
    }

    /// Opens a stored key-value under the data prefix.
    pub(crate) fn open_entry<T: DeserializeOwned>(
        &self,
        kv: &KeyValue,
    ) -> Result<Entry<T>, KvError> {
        let key = self.user_key(kv.key())?;
        let Some(plaintext) = self.sealer.open(kv.key(), kv.value()) else {
            return Err(KvError::Tampered { key });
        };
        let value = serde_json::from_slice(&plaintext).map_err(|source| KvError::Encoding {
            key: key.clone(),
            source,
        })?;
        Ok(Entry {
            key,
            value,
            mod_revision: kv.mod_revision(),
        })
    }

    /// The user's name for an etcd key under the data prefix.
    pub(crate) fn user_key(&self, etcd_key: &[u8]) -> Result<String, KvError> {
        etcd_key
            .strip_prefix(self.data_prefix.as_bytes())
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
            // Only this crate writes here, always UTF-8 under the prefix.
            .ok_or_else(|| KvError::Tampered {
                key: String::from_utf8_lossy(etcd_key).into_owned(),
            })
    }

    /// Reads every key under `prefix` at one revision, a page at a time.
    pub(crate) async fn snapshot<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Snapshot<T>, KvError> {
        // A compaction between two pages loses the first page's revision:
        // start again at the newest one.
        let mut tries = 0;
        loop {
            match self.snapshot_once(prefix).await {
                Err(KvError::Etcd {
                    source: etcd_client::Error::GRpcStatus(status),
                    ..
                }) if status.code() == Code::OutOfRange && tries < 3 => tries += 1,
                result => return result,
            }
        }
    }

    async fn snapshot_once<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Snapshot<T>, KvError> {
        let start_key = format!("{}{prefix}", self.data_prefix).into_bytes();
        let end_key = prefix_end(&start_key);
        let mut kvs = Vec::new();
        let mut from = start_key;
        let mut revision = 0;
        loop {
            let options = GetOptions::new()
                .with_range(end_key.clone())
                .with_limit(PAGE)
                // Later pages read at the first page's revision: one
                // consistent snapshot, however many pages.
                .with_revision(revision);
            let mut resp = self
                .call("list", prefix, |c| {
                    let (from, options) = (from.clone(), options.clone());
                    let mut kv = c.kv_client().max_decoding_message_size(MAX_DECODE);
                    async move { kv.get(from, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let page = resp.take_kvs();
            match page.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    kvs.extend(page);
                    break;
                }
            }
            kvs.extend(page);
        }
        let entries = kvs
            .iter()
            .map(|kv| self.open_entry(kv))
            .collect::<Result<_, _>>()?;
        Ok(Snapshot { entries, revision })
    }
}

/// What [`Inner::create_raw`] found.
pub(crate) struct CreateOutcome {
    /// This call's value is the one stored.
    pub(crate) created: bool,
    /// The stored value's mod revision.
    pub(crate) revision: i64,
    /// The store revision when the transaction ran.
    pub(crate) header_revision: i64,
}

/// etcd-client's (tonic's) TLS settings for `tls`.
pub(crate) fn tls_options(tls: &TlsConfig) -> etcd_client::TlsOptions {
    let mut options = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
    if let Some(identity) = &tls.identity {
        options = options.identity(etcd_client::Identity::from_pem(
            &identity.cert_pem,
            identity.key_pem.as_slice(),
        ));
    }
    if let Some(name) = &tls.domain_name {
        options = options.domain_name(name.clone());
    }
    options
}

/// Whether an error may go away on another attempt (possibly on another
/// member): transport failures, a member without a leader, timeouts.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::Unknown
                // h2 resets of a connection to a member that died.
                | Code::Internal
        ),
        _ => false,
    }
}

/// etcd's answer to a write attached to a lease it no longer has.
fn lease_error(e: KvError, lease: Option<i64>) -> KvError {
    match (e, lease) {
        (
            KvError::Etcd {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            },
            Some(lease),
        ) if status.code() == Code::NotFound => KvError::LeaseLost { lease },
        (e, _) => e,
    }
}

fn live_lease(lease: Option<&Lease>) -> Result<Option<i64>, KvError> {
    match lease {
        Some(lease) if !lease.is_alive() => Err(KvError::LeaseLost { lease: lease.id() }),
        Some(lease) => Ok(Some(lease.id())),
        None => Ok(None),
    }
}

/// The key-value a failed transaction's `or_else` get returned.
fn current_kv(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

/// Whether a failed transaction found exactly `sealed` stored: this call's
/// own earlier attempt landed before its answer was lost.
fn current_is(resp: &TxnResponse, sealed: &[u8]) -> bool {
    current_kv(resp).is_some_and(|kv| kv.value() == sealed)
}

/// The end of etcd's range for keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only an all-0xff (or empty) prefix: "to the end of the keyspace".
    vec![0]
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::Config {
            reason: "empty key".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/ns/kv/"), b"/ns/kv0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
