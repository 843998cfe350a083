//! The CVM's registration with dstack-gateway for its whole life, as
//! upstream's `dstack-util gateway-checker` keeps it (a service of its own
//! there, a task of PID1's runtime here).
//!
//! Boot registers once ([`GatewayKeeper::register`]); then
//! [`GatewayKeeper::keep_alive`] registers again on a schedule, so gateway
//! replicas added later become peers, removed ones stop being peers, a
//! gateway that forgot the CVM learns it again, and a gateway that was down
//! at boot still gets the CVM ([`delay_after`]). Every registration sends
//! the same WireGuard public key, so the gateway keeps the instance's
//! address and peer; the private key stays in PID1's memory (wiped when
//! dropped) and reaches the kernel only when the device is first made.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use dstack_attest::Platform;
use dstack_proto::gateway::{GUEST_WG_INTERFACE, GUEST_WG_PORT, RegisterCvmRequest};
use dstack_ra_tls::RaTlsCert;
use rand_core::RngCore as _;
use x25519_dalek::StaticSecret;
use zeroize::Zeroize as _;

use super::installed::{Changes, Installed, endpoint_ips};
use super::register::{self, CLIENT_CERT_VALIDITY, GatewayCheck};
use super::wireguard::{self, Device, Peer, TunnelChange};
use super::{
    GatewayAppPin, GatewayCache, GatewayError, GatewayLink, GatewaySetup, TunnelPlan,
    evidence_checker, firewall, register_first,
};
use crate::state::ShutdownSignal;

/// Between two registrations while the gateway answers. Upstream's checker
/// re-registers every 3 minutes; here the tunnel needs no registration to
/// stay up (the gateway keeps an instance until its handshakes stop for
/// hours, UPSTREAM §10.5 "Recycling"), so this only bounds how long a new
/// gateway replica waits to become a peer.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// The first retry after a failure, doubled for each failure in a row up
/// to [`REFRESH_INTERVAL`]: a gateway outage is usually fleet-wide, and
/// every CVM retrying every 30 s would pile onto it (upstream starts at
/// 30 s too, capped at 2 minutes).
pub(crate) const FIRST_RETRY: Duration = Duration::from_secs(30);
/// A client certificate is made again once it has less than this left.
const CLIENT_CERT_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// How long to wait before the next registration, after `failures` failed
/// ones in a row (0: the last one succeeded), before jitter.
pub(crate) fn delay_after(failures: u32) -> Duration {
    match failures {
        0 => REFRESH_INTERVAL,
        n => {
            let doublings = (n - 1).min(u32::BITS - 1);
            FIRST_RETRY
                .checked_mul(1 << doublings)
                .unwrap_or(REFRESH_INTERVAL)
                .min(REFRESH_INTERVAL)
        }
    }
}

/// `base` plus up to a tenth of it, scaled by `random`: CVMs booted (or
/// cut off) together spread their registrations out.
pub(crate) fn with_jitter(base: Duration, random: u32) -> Duration {
    let tenth = u64::try_from(base.as_millis() / 10).unwrap_or(u64::MAX);
    let extra = u128::from(tenth) * u128::from(random) / (u128::from(u32::MAX) + 1);
    base + Duration::from_millis(u64::try_from(extra).unwrap_or(0))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client certificate, kept across registrations: one made at boot,
/// before any service could extend RTMR3, has a quote and an event log that
/// agree; a later one could race an app's runtime event. Its key is wiped
/// when dropped.
struct ClientCert {
    cert: RaTlsCert,
    /// When it was made, in Unix seconds.
    made_at: u64,
}

impl ClientCert {
    fn usable_at(&self, now: u64) -> bool {
        let renew_at = CLIENT_CERT_VALIDITY.saturating_sub(CLIENT_CERT_RENEW_BEFORE);
        now < self.made_at.saturating_add(renew_at.as_secs())
    }
}

impl Drop for ClientCert {
    fn drop(&mut self) {
        self.cert.key_der.zeroize();
    }
}

/// Registers this CVM with dstack-gateway and keeps the tunnel to what the
/// gateway answers. Quotes on the TEE and configures the kernel's network:
/// PID1 only. `Debug` shows no key.
pub struct GatewayKeeper {
    platform: Arc<dyn Platform>,
    setup: GatewaySetup,
    /// The tunnel's private key (x25519-dalek wipes it when dropped),
    /// shared with the blocking thread that hands it to the kernel.
    secret: Arc<StaticSecret>,
    /// Its public key, base64, as the gateway knows the CVM.
    wg_public_key: String,
    /// Made at the first registration attempt, then kept.
    credentials: Option<Credentials>,
    installed: Installed,
}

/// What a registration presents and how it judges the gateway.
struct Credentials {
    client: ClientCert,
    /// Made with the first client certificate (on the sim TEE its quote
    /// names the root to trust), then kept.
    check: GatewayCheck,
}

impl std::fmt::Debug for GatewayKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKeeper")
            .field("urls", &self.setup.urls)
            .field("wg_public_key", &self.wg_public_key)
            .field("installed", &self.installed)
            .finish_non_exhaustive()
    }
}

impl GatewayKeeper {
    /// A keeper with a fresh WireGuard key, registered nowhere yet.
    pub fn new(platform: Arc<dyn Platform>, setup: GatewaySetup) -> Self {
        let (secret, public) = wireguard::generate_key();
        if setup.pin == GatewayAppPin::Unpinned {
            tracing::warn!(
                "no KMS names the gateway app: any attested dstack CVM is accepted as the gateway (no app id pinned)"
            );
        }
        Self {
            platform,
            setup,
            secret: Arc::new(secret),
            wg_public_key: BASE64.encode(public.as_bytes()),
            credentials: None,
            installed: Installed::default(),
        }
    }

    /// Registers at the first of the gateway URLs that accepts the CVM and
    /// brings the tunnel, its firewall and the cache to its answer.
    pub async fn register(&mut self) -> Result<GatewayLink, GatewayError> {
        self.register_and_apply().await.map(|(link, _)| link)
    }

    /// Re-registers for as long as the CVM runs, on the schedule of
    /// [`delay_after`] with jitter: `registered` says whether the boot's
    /// registration succeeded. Failures are logged and retried, never
    /// fatal; a misconfiguration no retry can fix ends the task. Returns
    /// when shutdown is requested.
    pub async fn keep_alive(mut self, registered: bool, shutdown: ShutdownSignal) {
        let mut failures = u32::from(!registered);
        loop {
            let delay = with_jitter(delay_after(failures), rand_core::OsRng.next_u32());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return,
            }
            match self.register_and_apply().await {
                Ok((link, changes)) if failures > 0 || !changes.is_empty() => {
                    tracing::info!(
                        "dstack-gateway: registered via {} ({} in the tunnel): {changes}",
                        link.gateway_url,
                        link.client_ip,
                    );
                    failures = 0;
                }
                Ok((link, _)) => {
                    tracing::debug!("dstack-gateway: re-registered via {}", link.gateway_url);
                }
                Err(e) if e.is_permanent() => {
                    tracing::error!(
                        "dstack-gateway: {}; no more re-registration",
                        dstack_proto::error_chain(&e)
                    );
                    return;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        "dstack-gateway re-registration failed ({failures} in a row), next in about {} s: {}",
                        delay_after(failures).as_secs(),
                        dstack_proto::error_chain(&e)
                    );
                }
            }
        }
    }

    async fn register_and_apply(&mut self) -> Result<(GatewayLink, Changes), GatewayError> {
        if self.setup.urls.is_empty() {
            return Err(GatewayError::NoUrls);
        }
        let Credentials { client, check } =
            credentials(&mut self.credentials, &self.platform, &self.setup).await?;
        let request = RegisterCvmRequest {
            client_public_key: self.wg_public_key.clone(),
            // Always sent, as upstream does: a gateway that gets none fetches
            // the app-compose itself and refuses connections until it has it.
            port_policy: Some(self.setup.port_policy.clone()),
        };
        let (gateway_url, response) =
            register_first(&self.setup.urls, &client.cert, check, &request).await?;
        let plan = TunnelPlan::of(&response)?;
        let peers = plan.resolve().await?;
        let changes = self.apply(plan.client_ip, peers).await?;
        let cache = GatewayCache {
            wg_public_key: self.wg_public_key.clone(),
            gateway_url: gateway_url.clone(),
            registered_at: unix_now(),
            response: response.clone(),
        };
        if let Err(e) = cache.save(&self.setup.cache_path) {
            tracing::warn!(
                "cannot write the gateway cache {}: {e}",
                self.setup.cache_path.display()
            );
        }
        let link = GatewayLink {
            client_ip: plan.client_ip,
            wg_public_key: self.wg_public_key.clone(),
            gateway_url,
            agent: response.agent,
        };
        Ok((link, changes))
    }

    /// Brings the firewall and the tunnel to `client_ip` and `peers`;
    /// returns what changed (nothing when the answer is what the kernel has).
    async fn apply(
        &mut self,
        client_ip: std::net::Ipv4Addr,
        peers: Vec<Peer>,
    ) -> Result<Changes, GatewayError> {
        let target = Installed::of(client_ip, &peers);
        let changes = Changes::between(&self.installed, &target);
        if changes.is_empty() {
            return Ok(changes);
        }
        if changes.add_address.is_some() && !changes.remove_addresses.is_empty() {
            tracing::warn!(
                "dstack-gateway moved this CVM from {:?} to {client_ip} in the tunnel",
                changes.remove_addresses
            );
        }
        let table = changes
            .firewall
            .then(|| {
                firewall::table(
                    self.setup.uplink.as_deref(),
                    &endpoint_ips(&peers),
                    GUEST_WG_PORT,
                )
            })
            .transpose()
            .map_err(GatewayError::Firewall)?;
        // Only the device's first configuration needs the key: the kernel
        // keeps it, and a peer update without one leaves it in place.
        let secret = changes.create.then(|| self.secret.clone());
        // Until it all went through the kernel may hold either state.
        self.installed = self.installed.during_change_to(&target);
        let applying = changes.clone();
        tokio::task::spawn_blocking(move || {
            // The port is closed to all but the (new) gateways before any
            // peer changes.
            if let Some(table) = table {
                firewall::apply(table).map_err(GatewayError::Firewall)?;
            }
            let device = applying.peers.then(|| Device {
                ifname: GUEST_WG_INTERFACE,
                private_key: secret.as_deref(),
                listen_port: GUEST_WG_PORT,
                peers: &peers,
            });
            wireguard::change(
                GUEST_WG_INTERFACE,
                &TunnelChange {
                    create: applying.create,
                    device,
                    add_address: applying.add_address,
                    remove_addresses: &applying.remove_addresses,
                    add_routes: &applying.add_routes,
                    remove_routes: &applying.remove_routes,
                },
            )?;
            Ok::<_, GatewayError>(())
        })
        .await??;
        self.installed = target;
        Ok(changes)
    }
}

/// The credentials in `slot`, made or renewed as needed: a certificate
/// that cannot be renewed is used for as long as it is valid.
async fn credentials<'a>(
    slot: &'a mut Option<Credentials>,
    platform: &Arc<dyn Platform>,
    setup: &GatewaySetup,
) -> Result<&'a Credentials, GatewayError> {
    let now = unix_now();
    let current = slot.take();
    let credentials = match current {
        Some(current) if current.client.usable_at(now) => current,
        current => match mint(platform, setup, current.is_none()).await {
            Ok((cert, collateral)) => {
                let client = ClientCert { cert, made_at: now };
                let check = match current {
                    Some(current) => current.check,
                    None => GatewayCheck {
                        evidence: evidence_checker(
                            platform.kind(),
                            &client.cert,
                            collateral,
                            &setup.pccs_url,
                        )?,
                        pin: setup.pin.clone(),
                    },
                };
                Credentials { client, check }
            }
            Err(e) => match current {
                Some(current) => {
                    tracing::warn!(
                        "dstack-gateway: cannot renew the client certificate, using the current one: {}",
                        dstack_proto::error_chain(&e)
                    );
                    current
                }
                None => return Err(e),
            },
        },
    };
    Ok(slot.insert(credentials))
}

/// A fresh client certificate, and for the `first` (without a PCCS) the
/// TEE's collateral. Quotes on a blocking thread.
async fn mint(
    platform: &Arc<dyn Platform>,
    setup: &GatewaySetup,
    first: bool,
) -> Result<(RaTlsCert, Option<dstack_attest::Collateral>), GatewayError> {
    let (platform, app) = (platform.clone(), setup.app.clone());
    // Without a PCCS, the sim TEE's collateral serves the gateway's quote
    // too: both are signed under the host's one sim root.
    let want_collateral = first && setup.pccs_url.is_empty();
    tokio::task::spawn_blocking(move || {
        let cert =
            register::client_certificate(&*platform, &app).map_err(GatewayError::ClientCert)?;
        let collateral = want_collateral
            .then(|| {
                platform.collateral().unwrap_or_else(|e| {
                    tracing::warn!("no collateral from the TEE for the gateway's quote: {e}");
                    None
                })
            })
            .flatten();
        Ok((cert, collateral))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use dstack_proto::gateway::PortPolicy;

    use super::*;
    use crate::gateway::ClientApp;

    #[test]
    fn retries_back_off_from_30_s_to_the_refresh_interval() {
        let schedule: Vec<u64> = (0..9).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(schedule, [600, 30, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(delay_after(u32::MAX), REFRESH_INTERVAL);
        assert_eq!(delay_after(33), REFRESH_INTERVAL);
    }

    #[test]
    fn jitter_adds_up_to_a_tenth() {
        let base = Duration::from_secs(600);
        assert_eq!(with_jitter(base, 0), base);
        assert_eq!(
            with_jitter(base, u32::MAX / 2),
            Duration::from_millis(629_999)
        );
        let most = with_jitter(base, u32::MAX);
        assert!(most < Duration::from_secs(660) && most > Duration::from_secs(659));
        assert_eq!(
            with_jitter(FIRST_RETRY, u32::MAX / 2),
            Duration::from_millis(31_499)
        );
        assert_eq!(with_jitter(Duration::ZERO, u32::MAX), Duration::ZERO);
    }

    #[test]
    fn a_client_certificate_is_made_again_a_day_before_it_expires() {
        let cert = ClientCert {
            cert: RaTlsCert {
                cert_der: vec![1],
                key_der: vec![2; 4],
            },
            made_at: 1_000,
        };
        assert!(cert.usable_at(1_000));
        assert!(cert.usable_at(1_000 + 9 * 24 * 3600 - 1));
        assert!(!cert.usable_at(1_000 + 9 * 24 * 3600));
    }

    fn keeper(urls: Vec<String>) -> GatewayKeeper {
        let platform: Arc<dyn Platform> = Arc::new(
            dstack_attest::SimPlatform::new(
                Arc::new(dstack_attest::SimAuthority::generate().unwrap()),
                dstack_attest::SimTdIdentity::default(),
                vec![],
            )
            .unwrap(),
        );
        let setup = GatewaySetup {
            urls,
            pccs_url: String::new(),
            port_policy: PortPolicy::default(),
            app: ClientApp::default(),
            pin: GatewayAppPin::Unpinned,
            uplink: None,
            cache_path: PathBuf::from("/nonexistent/gateway-cache.json"),
        };
        GatewayKeeper::new(platform, setup)
    }

    #[tokio::test]
    async fn no_urls_is_named_and_ends_the_task() {
        let mut keeper = keeper(Vec::new());
        let err = keeper.register().await.unwrap_err();
        assert!(matches!(err, GatewayError::NoUrls), "{err}");
        assert!(err.is_permanent());
        // The task gives up at its first attempt instead of retrying.
        tokio::time::pause();
        let task = tokio::spawn(keeper.keep_alive(false, ShutdownSignal::default()));
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the task ended")
            .unwrap();
    }

    /// A gateway that is down keeps the same key and the client
    /// certificate, and nothing in the kernel is touched.
    #[tokio::test]
    async fn an_unreachable_gateway_leaves_the_tunnel_alone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        drop(listener);
        let mut keeper = keeper(vec![url.clone(), "http://not-https".into()]);
        let key = keeper.wg_public_key.clone();
        let err = keeper.register().await.unwrap_err();
        assert!(
            matches!(err, GatewayError::Unregistered { tried: 2, .. }),
            "{err}"
        );
        assert!(!err.is_permanent());
        assert!(err.to_string().contains("(2)"), "{err}");
        let made_at = keeper.credentials.as_ref().unwrap().client.made_at;
        let err = keeper.register().await.unwrap_err();
        assert!(matches!(err, GatewayError::Unregistered { .. }), "{err}");
        assert_eq!(keeper.wg_public_key, key);
        assert_eq!(keeper.credentials.as_ref().unwrap().client.made_at, made_at);
        assert_eq!(keeper.installed, Installed::default());
        assert!(!format!("{keeper:?}").contains("secret"));
    }

    #[tokio::test]
    async fn shutdown_ends_the_task() {
        tokio::time::pause();
        let shutdown = ShutdownSignal::default();
        let task = tokio::spawn(
            keeper(vec!["https://gw.invalid".into()]).keep_alive(true, shutdown.clone()),
        );
        shutdown.request(crate::state::ShutdownReason::Sigterm);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the task ended")
            .unwrap();
    }
}
