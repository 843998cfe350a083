#![allow(clippy::tests_outside_test_module)]
//! The sealed store against a real 3-member etcd cluster: nothing mocked.

use std::time::Duration;

use dstack_cluster_kv::testing::EtcdCluster;
use dstack_cluster_kv::{
    ClusterKv, ConnectOptions, Entry, Event, KvError, SealKey, Snapshot, Watch,
};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, timeout};

const NS: &str = "/dstack-gateway/app-0123/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Registration {
    instance: String,
    ip: String,
    key_pem: String,
}

fn reg(instance: &str, ip: &str) -> Registration {
    Registration {
        instance: instance.into(),
        ip: ip.into(),
        key_pem: format!("-----BEGIN PRIVATE KEY----- {instance} -----END PRIVATE KEY-----"),
    }
}

fn seal_key() -> SealKey {
    SealKey::derive(
        b"the app key all replicas share",
        "dstack-gateway/cluster-kv",
    )
}

fn options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(15),
        attempt_timeout: Duration::from_secs(2),
        ..ConnectOptions::default()
    }
}

async fn connect(endpoints: &[String]) -> ClusterKv {
    ClusterKv::connect(endpoints, NS, seal_key(), options())
        .await
        .unwrap()
}

async fn start() -> EtcdCluster {
    let started = Instant::now();
    let cluster = EtcdCluster::start(3).await.unwrap();
    eprintln!(
        "3-member etcd cluster healthy after {:?}",
        started.elapsed()
    );
    cluster
}

/// The next event, or a panic after 10 s.
async fn next<T: serde::de::DeserializeOwned>(watch: &mut Watch<T>) -> Result<Event<T>, KvError> {
    timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch event within 10 s")
}

fn tampered<T: std::fmt::Debug>(result: Result<T, KvError>, key: &str) {
    match result {
        Err(KvError::Tampered { key: k }) => assert_eq!(k, key),
        other => panic!("expected Tampered for {key}, got {other:?}"),
    }
}

/// A raw etcd client, as the untrusted host would use.
async fn raw(cluster: &EtcdCluster) -> etcd_client::Client {
    etcd_client::Client::connect(cluster.client_urls(), None)
        .await
        .unwrap()
}

#[tokio::test]
async fn values_written_through_one_member_are_read_through_another() {
    let cluster = start().await;
    let urls = cluster.client_urls();
    let kv0 = connect(&urls[0..1]).await;
    let kv2 = connect(&urls[2..3]).await;

    let alice = reg("alice", "10.0.0.2");
    kv0.put("apps/alice", &alice).await.unwrap();
    assert_eq!(
        kv2.get::<Registration>("apps/alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(kv2.get::<Registration>("apps/nobody").await.unwrap(), None);

    // Sealed at rest: the host sees the key name, never the value.
    let mut raw = raw(&cluster).await;
    let stored = raw.get(kv0.etcd_key("apps/alice"), None).await.unwrap();
    let stored = stored.kvs()[0].value();
    assert_eq!(stored[0], 1, "seal format version");
    assert!(!stored.windows(5).any(|w| w == b"alice" || w == b"10.0."));

    // Compare-and-swap on the revision an entry was read at.
    let entry: Entry<Registration> = kv2.get_entry("apps/alice").await.unwrap().unwrap();
    let moved = reg("alice", "10.0.0.9");
    assert!(
        kv2.compare_and_swap("apps/alice", entry.mod_revision, &moved)
            .await
            .unwrap()
    );
    assert!(
        !kv0.compare_and_swap("apps/alice", entry.mod_revision, &alice)
            .await
            .unwrap(),
        "a stale revision loses"
    );
    assert_eq!(kv0.get("apps/alice").await.unwrap(), Some(moved.clone()));
    // Revision 0 means "absent".
    assert!(
        kv0.compare_and_swap("apps/bob", 0, &reg("bob", "10.0.0.3"))
            .await
            .unwrap()
    );
    assert!(
        !kv0.compare_and_swap("apps/bob", 0, &reg("eve", "10.0.0.3"))
            .await
            .unwrap()
    );

    // Lists are in key order, without the namespace, and see only the prefix.
    kv0.put("other/x", &reg("x", "10.0.0.4")).await.unwrap();
    let listed: Vec<Entry<Registration>> = kv2.list("apps/").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["apps/alice", "apps/bob"]);
    assert_eq!(listed[0].value, moved);
    assert_eq!(kv2.list::<Registration>("").await.unwrap().len(), 3);

    let current = kv0
        .get_entry::<Registration>("apps/bob")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !kv0.compare_and_delete("apps/bob", current.mod_revision - 1)
            .await
            .unwrap()
    );
    assert!(
        kv0.compare_and_delete("apps/bob", current.mod_revision)
            .await
            .unwrap()
    );
    assert!(kv2.delete("apps/alice").await.unwrap());
    assert!(!kv2.delete("apps/alice").await.unwrap());
    assert_eq!(kv0.get::<Registration>("apps/alice").await.unwrap(), None);

    let status = kv2.status().await.unwrap();
    assert_eq!(status.members.len(), 3);
    assert!(status.leader_member().is_some());
    assert_eq!(
        status.responder_member().unwrap().client_urls,
        [urls[2].clone()]
    );
    assert!(status.version.starts_with('3'), "{}", status.version);
}

#[tokio::test]
async fn lists_page_through_many_values_at_one_revision() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let kv = connect(&cluster.client_urls()).await;
    // More than one page (64 entries).
    for i in 0..150 {
        kv.put(&format!("ip/{i:03}"), &i).await.unwrap();
    }
    let snapshot: Snapshot<u32> = kv.snapshot("ip/").await.unwrap();
    assert_eq!(snapshot.entries.len(), 150);
    assert!(
        snapshot
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.value as usize == i)
    );
    assert!(snapshot.revision >= snapshot.entries[149].mod_revision);
}

#[tokio::test]
async fn only_one_of_ten_racing_creates_wins() {
    let cluster = start().await;
    let urls = cluster.client_urls();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(connect(&urls[i..=i]).await);
    }
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let kv = clients[i % 3].clone();
            tokio::spawn(async move {
                let won = kv
                    .create("ip/10.0.0.7", &format!("instance-{i}"))
                    .await
                    .unwrap();
                (i, won)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, won) = task.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let stored: String = clients[1].get("ip/10.0.0.7").await.unwrap().unwrap();
    assert_eq!(stored, format!("instance-{}", winners[0]));
}

#[tokio::test]
async fn locks_are_exclusive_between_clients_and_released_on_drop() {
    let cluster = start().await;
    let urls = cluster.client_urls();
    let a = connect(&urls[0..1]).await;
    let b = connect(&urls[1..2]).await;
    let ttl = Duration::from_secs(5);

    let held = a.lock("acme-renewal", ttl, None).await.unwrap();
    assert!(held.is_held());
    assert!(b.try_lock("acme-renewal", ttl).await.unwrap().is_none());
    assert!(
        a.try_lock("acme-renewal", ttl).await.unwrap().is_none(),
        "not reentrant"
    );
    let started = Instant::now();
    match b
        .lock("acme-renewal", ttl, Some(Duration::from_millis(400)))
        .await
    {
        Err(KvError::LockTimeout { name, waited }) => {
            assert_eq!(name, "acme-renewal");
            assert!(waited >= Duration::from_millis(400));
        }
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // Another name is another lock.
    let other = b.try_lock("wg-ip-pool", ttl).await.unwrap().unwrap();

    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            b.lock("acme-renewal", ttl, Some(Duration::from_secs(20)))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "held by a");
    let first_revision = held.revision();
    let released = Instant::now();
    drop(held);
    let second = waiter.await.unwrap().unwrap();
    eprintln!("lock passed on {:?} after drop", released.elapsed());
    assert!(released.elapsed() < Duration::from_secs(3));
    assert!(second.revision() > first_revision, "fencing tokens grow");

    second.unlock().await.unwrap();
    let third = a.try_lock("acme-renewal", ttl).await.unwrap();
    assert!(third.is_some(), "free again after unlock");
    other.unlock().await.unwrap();
}

#[tokio::test]
async fn a_dead_holders_lock_frees_itself_after_its_ttl() {
    let cluster = start().await;
    let urls = cluster.client_urls();
    let a = connect(&urls[0..1]).await;
    let b = connect(&urls[2..3]).await;

    let held = a
        .lock("leader", Duration::from_secs(2), None)
        .await
        .unwrap();
    // The holder "dies": its lease is no longer refreshed, nor revoked.
    held.abandon();
    let abandoned = Instant::now();
    assert!(
        b.try_lock("leader", Duration::from_secs(2))
            .await
            .unwrap()
            .is_none()
    );
    let taken = b
        .lock(
            "leader",
            Duration::from_secs(2),
            Some(Duration::from_secs(15)),
        )
        .await
        .unwrap();
    let after = abandoned.elapsed();
    eprintln!("dead holder's lock taken over after {after:?}");
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    assert!(after < Duration::from_secs(8), "{after:?}");
    assert!(taken.is_held());
}

#[tokio::test]
async fn a_lease_kept_alive_outlives_its_ttl() {
    let cluster = start().await;
    let kv = connect(&cluster.client_urls()).await;
    let lease = kv.grant_lease(Duration::from_secs(1)).await.unwrap();
    kv.put_ephemeral("seen/alice", &1u64, &lease).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lease.is_alive());
    assert_eq!(kv.get::<u64>("seen/alice").await.unwrap(), Some(1));
}

#[tokio::test]
async fn ephemeral_values_vanish_with_their_lease() {
    let cluster = start().await;
    let urls = cluster.client_urls();
    let writer = connect(&urls[0..1]).await;
    let reader = connect(&urls[1..2]).await;

    let lease = writer.grant_lease(Duration::from_secs(10)).await.unwrap();
    writer
        .put_ephemeral("conns/node-a", &12u32, &lease)
        .await
        .unwrap();
    assert!(
        writer
            .create_ephemeral("claims/inst-1", &"node-a", &lease)
            .await
            .unwrap()
    );
    assert!(!reader.create("claims/inst-1", &"node-b").await.unwrap());
    writer.put("durable", &"stays").await.unwrap();
    assert_eq!(reader.get::<u32>("conns/node-a").await.unwrap(), Some(12));

    lease.revoke().await.unwrap();
    assert_eq!(reader.get::<u32>("conns/node-a").await.unwrap(), None);
    assert_eq!(reader.get::<String>("claims/inst-1").await.unwrap(), None);
    assert_eq!(
        reader.get::<String>("durable").await.unwrap().as_deref(),
        Some("stays")
    );

    // Dropping a lease revokes it too (in the background).
    let lease = writer.grant_lease(Duration::from_secs(30)).await.unwrap();
    writer
        .put_ephemeral("conns/node-a", &3u32, &lease)
        .await
        .unwrap();
    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(5);
    while reader.get::<u32>("conns/node-a").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "value outlived its dropped lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn watches_see_puts_and_deletes_from_another_client() {
    let cluster = start().await;
    let urls = cluster.client_urls();
    let watcher = connect(&urls[0..1]).await;
    let writer = connect(&urls[2..3]).await;

    writer
        .put("apps/before", &reg("before", "10.0.0.1"))
        .await
        .unwrap();
    let mut watch = watcher.watch::<Registration>("apps/").await.unwrap();
    writer
        .put("apps/alice", &reg("alice", "10.0.0.2"))
        .await
        .unwrap();
    writer
        .put("unwatched", &reg("x", "10.0.0.3"))
        .await
        .unwrap();
    writer.delete("apps/before").await.unwrap();
    let lease = writer.grant_lease(Duration::from_secs(10)).await.unwrap();
    writer
        .put_ephemeral("apps/eph", &reg("eph", "10.0.0.5"), &lease)
        .await
        .unwrap();
    lease.revoke().await.unwrap();

    match next(&mut watch).await.unwrap() {
        Event::Put(entry) => {
            assert_eq!(entry.key, "apps/alice");
            assert_eq!(entry.value, reg("alice", "10.0.0.2"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        next(&mut watch).await.unwrap(),
        Event::Delete("apps/before".into())
    );
    assert!(matches!(next(&mut watch).await.unwrap(), Event::Put(e) if e.key == "apps/eph"));
    assert_eq!(
        next(&mut watch).await.unwrap(),
        Event::Delete("apps/eph".into())
    );

    // Snapshot, then watch from right after it: nothing missed in between.
    let snapshot = watcher.snapshot::<Registration>("apps/").await.unwrap();
    assert_eq!(snapshot.entries.len(), 1);
    writer
        .put("apps/bob", &reg("bob", "10.0.0.6"))
        .await
        .unwrap();
    let mut from = watcher
        .watch_from::<Registration>("apps/", snapshot.revision + 1)
        .await
        .unwrap();
    assert!(matches!(next(&mut from).await.unwrap(), Event::Put(e) if e.key == "apps/bob"));
    assert!(matches!(next(&mut watch).await.unwrap(), Event::Put(e) if e.key == "apps/bob"));
}

#[tokio::test]
async fn a_watch_behind_a_compaction_resyncs() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let kv = connect(&cluster.client_urls()).await;
    kv.put("apps/a", &1u32).await.unwrap();
    let before = kv.snapshot::<u32>("apps/").await.unwrap();
    kv.put("apps/b", &2u32).await.unwrap();
    kv.delete("apps/a").await.unwrap();
    kv.put("apps/c", &3u32).await.unwrap();
    let mut raw = raw(&cluster).await;
    let now = kv.snapshot::<u32>("apps/").await.unwrap().revision;
    raw.compact(now, None).await.unwrap();

    let mut watch = kv
        .watch_from::<u32>("apps/", before.revision + 1)
        .await
        .unwrap();
    match next(&mut watch).await.unwrap() {
        Event::Resync(entries) => {
            let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(keys, ["apps/b", "apps/c"]);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    kv.put("apps/d", &4u32).await.unwrap();
    assert!(matches!(next(&mut watch).await.unwrap(), Event::Put(e) if e.key == "apps/d"));
}

#[tokio::test]
async fn everything_keeps_working_with_one_member_down() {
    let mut cluster = start().await;
    let urls = cluster.client_urls();
    let kv = connect(&urls).await;
    let other = connect(&urls).await;
    let mut watch = kv.watch::<u32>("counts/").await.unwrap();
    let lease = kv.grant_lease(Duration::from_secs(2)).await.unwrap();
    kv.put_ephemeral("counts/eph", &0u32, &lease).await.unwrap();
    assert!(matches!(next(&mut watch).await.unwrap(), Event::Put(e) if e.key == "counts/eph"));

    // Every member goes down once, so the watch, the lease's keep-alive and
    // the calls all lose whichever member served them at least once.
    for (round, down) in (0..3).enumerate() {
        let round = u32::try_from(round).unwrap();
        cluster.stop_member(down);
        let stopped = Instant::now();

        let key = format!("counts/{round}");
        kv.put(&key, &round).await.unwrap();
        assert_eq!(other.get::<u32>(&key).await.unwrap(), Some(round));
        assert!(
            other
                .create(&format!("claims/{round}"), &round)
                .await
                .unwrap()
        );
        assert!(!kv.create(&format!("claims/{round}"), &round).await.unwrap());
        let listed = other.list::<u32>("counts/").await.unwrap();
        assert!(listed.iter().any(|e| e.key == key));
        match next(&mut watch).await.unwrap() {
            Event::Put(entry) => assert_eq!((entry.key, entry.value), (key.clone(), round)),
            other => panic!("{other:?}"),
        }
        let lock = kv
            .lock(
                "renewal",
                Duration::from_secs(2),
                Some(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        assert!(
            other
                .try_lock("renewal", Duration::from_secs(2))
                .await
                .unwrap()
                .is_none()
        );
        lock.unlock().await.unwrap();
        let status = other.status().await.unwrap();
        assert_eq!(status.members.len(), 3);
        assert!(status.leader.is_some());
        assert_ne!(
            status.responder_member().unwrap().client_urls,
            [urls[down].clone()]
        );
        eprintln!(
            "member {down} down: all operations done in {:?}",
            stopped.elapsed()
        );

        cluster.start_member(down).await.unwrap();
    }
    // The 2 s lease lived through three member losses.
    assert!(lease.is_alive());
    assert_eq!(other.get::<u32>("counts/eph").await.unwrap(), Some(0));
    // And the restarted members caught up.
    for i in 0..3 {
        let direct = connect(&urls[i..=i]).await;
        assert_eq!(direct.get::<u32>("counts/2").await.unwrap(), Some(2));
    }
}

#[tokio::test]
async fn tampered_moved_or_foreign_values_are_refused() {
    let cluster = start().await;
    let urls = cluster.client_urls();
    let kv = connect(&urls).await;
    let mut host = raw(&cluster).await;
    let mut watch = kv.watch::<Registration>("apps/").await.unwrap();

    kv.put("apps/alice", &reg("alice", "10.0.0.2"))
        .await
        .unwrap();
    kv.put("apps/bob", &reg("bob", "10.0.0.3")).await.unwrap();
    assert!(matches!(next(&mut watch).await.unwrap(), Event::Put(_)));
    assert!(matches!(next(&mut watch).await.unwrap(), Event::Put(_)));

    // Raw bytes under a sealed key, as the host could write.
    host.put(
        kv.etcd_key("apps/mallory"),
        b"{\"instance\":\"mallory\"}".to_vec(),
        None,
    )
    .await
    .unwrap();
    tampered(kv.get::<Registration>("apps/mallory").await, "apps/mallory");
    tampered(next(&mut watch).await, "apps/mallory");
    // A list names the bad entry instead of skipping it.
    tampered(kv.list::<Registration>("apps/").await, "apps/mallory");
    host.delete(kv.etcd_key("apps/mallory"), None)
        .await
        .unwrap();
    assert_eq!(
        next(&mut watch).await.unwrap(),
        Event::Delete("apps/mallory".into())
    );

    // A flipped bit in a real sealed value.
    let alice = host
        .get(kv.etcd_key("apps/alice"), None)
        .await
        .unwrap()
        .kvs()[0]
        .value()
        .to_vec();
    let mut flipped = alice.clone();
    *flipped.last_mut().unwrap() ^= 1;
    host.put(kv.etcd_key("apps/carol"), flipped, None)
        .await
        .unwrap();
    tampered(kv.get::<Registration>("apps/carol").await, "apps/carol");
    tampered(next(&mut watch).await, "apps/carol");

    // A genuine value copied to another key.
    host.put(kv.etcd_key("apps/bob"), alice.clone(), None)
        .await
        .unwrap();
    tampered(kv.get::<Registration>("apps/bob").await, "apps/bob");
    tampered(next(&mut watch).await, "apps/bob");
    // ... or to the same key in another namespace.
    let elsewhere = ClusterKv::connect(&urls, "/dstack-gateway/other-app/", seal_key(), options())
        .await
        .unwrap();
    host.put(elsewhere.etcd_key("apps/alice"), alice, None)
        .await
        .unwrap();
    tampered(
        elsewhere.get::<Registration>("apps/alice").await,
        "apps/alice",
    );

    // A replica with another seal key can read nothing.
    let foreign = ClusterKv::connect(
        &urls,
        NS,
        SealKey::derive(b"another app key", "dstack-gateway/cluster-kv"),
        options(),
    )
    .await
    .unwrap();
    tampered(
        foreign.get::<Registration>("apps/alice").await,
        "apps/alice",
    );

    // The untouched value still opens, and the watch went on after errors.
    assert_eq!(
        kv.get("apps/alice").await.unwrap(),
        Some(reg("alice", "10.0.0.2"))
    );
    kv.put("apps/dave", &reg("dave", "10.0.0.4")).await.unwrap();
    assert!(matches!(next(&mut watch).await.unwrap(), Event::Put(e) if e.key == "apps/dave"));

    // An authentic value of another type is an encoding error, not tampering.
    match kv.get::<u64>("apps/dave").await {
        Err(KvError::Encoding { key, .. }) => assert_eq!(key, "apps/dave"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connecting_checks_its_settings_and_that_someone_answers() {
    let config = |r: Result<ClusterKv, KvError>| {
        assert!(matches!(r, Err(KvError::Config { .. })), "{r:?}");
    };
    let url = vec!["http://127.0.0.1:1".to_string()];
    config(ClusterKv::connect(&[], NS, seal_key(), options()).await);
    config(ClusterKv::connect(&url, "/no-slash", seal_key(), options()).await);
    config(ClusterKv::connect(&["127.0.0.1:2379".into()], NS, seal_key(), options()).await);
    config(
        ClusterKv::connect(
            &["https://127.0.0.1:2379".into()],
            NS,
            seal_key(),
            options(),
        )
        .await,
    );

    // Nobody listening: an error after the request timeout, not a hang.
    let quick = ConnectOptions {
        request_timeout: Duration::from_secs(1),
        ..options()
    };
    let started = Instant::now();
    let result = ClusterKv::connect(&url, NS, seal_key(), quick).await;
    assert!(
        matches!(result, Err(KvError::Etcd { .. } | KvError::Timeout { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let cluster = EtcdCluster::start(1).await.unwrap();
    let kv = connect(&cluster.client_urls()).await;
    assert!(matches!(kv.put("", &1).await, Err(KvError::Config { .. })));
    assert!(format!("{kv:?}").contains(NS));
    assert!(!format!("{:?}", seal_key()).contains(|c: char| c.is_ascii_digit()));
}

#[tokio::test]
async fn tls_with_client_certificates() {
    use dstack_cluster_kv::testing::ServerTls;
    use dstack_cluster_kv::{ClientIdentity, TlsConfig};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("gateway", ExtendedKeyUsagePurpose::ClientAuth);
    let client = TlsConfig {
        ca_pem: ca.pem().into_bytes(),
        identity: Some(ClientIdentity {
            cert_pem: client_cert.into_bytes(),
            key_pem: client_key.into_bytes().into(),
        }),
        domain_name: None,
    };
    assert!(!format!("{client:?}").contains("PRIVATE KEY"));
    let cluster = EtcdCluster::start_with(
        1,
        Some(ServerTls {
            cert_pem: server_cert,
            key_pem: server_key,
            client_ca_pem: Some(ca.pem()),
            client: client.clone(),
        }),
    )
    .await
    .unwrap();
    let urls = cluster.client_urls();
    assert!(urls[0].starts_with("https://"));

    let kv = ClusterKv::connect(
        &urls,
        NS,
        seal_key(),
        ConnectOptions {
            tls: Some(client.clone()),
            ..options()
        },
    )
    .await
    .unwrap();
    kv.put("tls", &"works").await.unwrap();
    assert_eq!(
        kv.get::<String>("tls").await.unwrap().as_deref(),
        Some("works")
    );

    // Without a client certificate etcd turns the client away.
    let anonymous = ConnectOptions {
        tls: Some(TlsConfig {
            identity: None,
            ..client
        }),
        request_timeout: Duration::from_secs(2),
        ..options()
    };
    assert!(
        ClusterKv::connect(&urls, NS, seal_key(), anonymous)
            .await
            .is_err()
    );
}
