//! Makes a [`NetPlan`] real: the bridges with the guest's address on each,
//! one network namespace per service that gets one (a bind mount under
//! `<run_dir>/netns`, so it outlives container restarts and keeps its
//! addresses), a veth pair per network joined, routes, forwarding, and the
//! firewall that keeps networks apart and masquerades traffic leaving the
//! CVM. Runs once per boot, before the first service starts.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use dstack_nftables::{
    BaseChain, Chain, ChainType, CmpOp, CtState, Family, Hook, IfName, Ipv4Cidr, Match, NftError,
    Policy, Rule, Ruleset, Statement, Table,
};
use nix::mount::{MsFlags, mount};
use nix::net::if_::if_nametoindex;
use nix::sched::{CloneFlags, setns, unshare};

use super::netplan::{BRIDGE_PREFIX, NetPlan, POOL, SUBNET_PREFIX};
use crate::netlink::Rtnl;

/// The nftables table holding the guest's container-network rules.
pub(crate) const TABLE: &str = "dstack";

/// What failed while laying out the networks, and on what.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("compose networks: {what} {subject}")]
    Io {
        what: &'static str,
        subject: String,
        #[source]
        source: io::Error,
    },
    #[error("compose networks: applying the firewall")]
    Firewall(#[source] dstack_nftables::NftError),
}

fn io_err(what: &'static str, subject: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
    let subject = subject.into();
    move |source| NetnsError::Io {
        what,
        subject,
        source,
    }
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Where the namespace of the service `owner` is bound.
pub(crate) fn netns_path(run_dir: &Path, owner: &str) -> PathBuf {
    run_dir.join("netns").join(owner)
}

fn index_of(name: &str) -> Result<u32, NetnsError> {
    if_nametoindex(name)
        .map_err(errno)
        .map_err(io_err("finding interface", name))
}

/// Lays out `plan` from the calling thread's network namespace (the guest's).
pub(crate) fn set_up(plan: &NetPlan, run_dir: &Path) -> Result<(), NetnsError> {
    let mut rtnl = Rtnl::open().map_err(io_err("opening", "rtnetlink"))?;
    // Published ports are reached on the guest's loopback too.
    rtnl.link_up(index_of("lo")?)
        .map_err(io_err("setting up", "lo"))?;
    let mut bridge_index = Vec::with_capacity(plan.bridges.len());
    for bridge in &plan.bridges {
        rtnl.add_bridge(&bridge.ifname)
            .map_err(io_err("creating bridge", &bridge.ifname))?;
        let index = index_of(&bridge.ifname)?;
        rtnl.add_ipv4(index, bridge.gateway, SUBNET_PREFIX)
            .map_err(io_err("addressing bridge", &bridge.ifname))?;
        rtnl.link_up(index)
            .map_err(io_err("setting up", &bridge.ifname))?;
        bridge_index.push(index);
    }
    // The firewall comes before forwarding is switched on, so no packet is
    // ever routed between two networks.
    firewall(plan)
        .and_then(|table| Ruleset::new().replace_table(table).apply())
        .map_err(NetnsError::Firewall)?;
    if plan.needs_forwarding() {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(io_err("enabling", "IPv4 forwarding"))?;
    }
    let dir = run_dir.join("netns");
    std::fs::create_dir_all(&dir).map_err(io_err("creating", dir.display().to_string()))?;
    for (owner, ns) in &plan.namespaces {
        let path = netns_path(run_dir, owner);
        let handle = new_namespace(&path)?;
        for link in &ns.links {
            rtnl.add_veth(
                &link.host_ifname,
                bridge_index[link.bridge],
                &link.ifname,
                handle.as_fd(),
            )
            .map_err(io_err("creating veth", &link.host_ifname))?;
            rtnl.link_up(index_of(&link.host_ifname)?)
                .map_err(io_err("setting up", &link.host_ifname))?;
        }
        let inside = ns.clone();
        let owner2 = owner.clone();
        std::thread::spawn(move || -> Result<(), NetnsError> {
            setns(handle.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(errno)
                .map_err(io_err("entering the namespace of", &owner2))?;
            configure_inside(&inside)
        })
        .join()
        .map_err(|_| NetnsError::Io {
            what: "configuring the namespace of",
            subject: owner.clone(),
            source: io::Error::other("thread panicked"),
        })??;
    }
    Ok(())
}

/// Unbinds every namespace of `plan` (each goes away with its last user).
pub(crate) fn tear_down(plan: &NetPlan, run_dir: &Path) {
    for owner in plan.namespaces.keys() {
        let path = netns_path(run_dir, owner);
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
}

/// Creates a network namespace bound at `path` (from a thread of its own,
/// so this process's namespace never changes) and opens it.
fn new_namespace(path: &Path) -> Result<File, NetnsError> {
    let subject = path.display().to_string();
    File::create(path).map_err(io_err("creating", &subject))?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(errno)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno)
    })
    .join()
    .map_err(|_| io::Error::other("thread panicked"))
    .and_then(|r| r)
    .map_err(io_err("creating network namespace", &subject))?;
    File::open(path).map_err(io_err("opening", subject))
}

/// Inside a service's namespace: loopback, addresses, default route.
fn configure_inside(ns: &super::netplan::Namespace) -> Result<(), NetnsError> {
    let mut rtnl = Rtnl::open().map_err(io_err("opening", "rtnetlink"))?;
    rtnl.link_up(index_of("lo")?)
        .map_err(io_err("setting up", "lo"))?;
    for link in &ns.links {
        let index = index_of(&link.ifname)?;
        rtnl.add_ipv4(index, link.address, SUBNET_PREFIX)
            .map_err(io_err("addressing", &link.ifname))?;
        rtnl.link_up(index)
            .map_err(io_err("setting up", &link.ifname))?;
    }
    if let Some(gateway) = ns.default_gateway {
        let link = ns
            .links
            .iter()
            .find(|link| same_subnet(link.address, gateway))
            .expect("the gateway is on one of the namespace's networks");
        rtnl.add_default_route(index_of(&link.ifname)?, gateway)
            .map_err(io_err("routing through", gateway.to_string()))?;
    }
    Ok(())
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr) -> bool {
    a.octets()[..3] == b.octets()[..3]
}

/// The guest's container-network firewall: nothing is forwarded except
/// from a network that is not `internal` to outside the CVM (and the
/// replies); what leaves the CVM is masqueraded behind the guest's address.
/// Traffic between two services of one network is bridged, not routed,
/// so these rules never see it.
pub(crate) fn firewall(plan: &NetPlan) -> Result<Table, NftError> {
    let bridges = IfName::prefix(BRIDGE_PREFIX)?;
    let mut forward = Chain::base(
        "forward",
        BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: 0,
            policy: Policy::Drop,
        },
    )
    .rule(Rule::new(
        [Match::CtState(vec![CtState::Established, CtState::Related])],
        Statement::Accept,
    ));
    for bridge in &plan.bridges {
        // Within one network traffic is bridged, which this hook sees only
        // where bridged IPv4 goes through netfilter (br_netfilter, as on
        // hosts running docker): allowed, as docker allows it.
        let this = IfName::exact(&bridge.ifname)?;
        forward = forward.rule(Rule::new(
            [
                Match::Iifname(CmpOp::Eq, this.clone()),
                Match::Oifname(CmpOp::Eq, this),
            ],
            Statement::Accept,
        ));
    }
    for bridge in plan.bridges.iter().filter(|b| !b.internal) {
        forward = forward.rule(Rule::new(
            [
                Match::Iifname(CmpOp::Eq, IfName::exact(&bridge.ifname)?),
                Match::Oifname(CmpOp::Neq, bridges.clone()),
            ],
            Statement::Accept,
        ));
    }
    let postrouting = Chain::base(
        "postrouting",
        BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: 100,
            policy: Policy::Accept,
        },
    )
    .rule(Rule::new(
        [
            Match::IpSaddr(CmpOp::Eq, Ipv4Cidr::new(POOL.0, POOL.1)?),
            Match::Oifname(CmpOp::Neq, bridges),
        ],
        Statement::Masquerade,
    ));
    Ok(Table::new(Family::Ip, TABLE)
        .chain(forward)
        .chain(postrouting))
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;

    /// Runs `f` in a thread that has entered the namespace at `path`.
    fn in_namespace<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(path).unwrap();
        std::thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// As root: lays out two networks in a private namespace standing in for
    /// the guest's, and checks who reaches whom over real veths and bridges.
    #[test]
    fn services_reach_their_networks_only() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root (network namespaces, bridges)");
            return;
        }
        let compose = dstack_compose::Compose::parse(
            "services:\n  a: {image: x, networks: [one]}\n  b: {image: x, networks: [one, two]}\n  c: {image: x, networks: [two]}\n  d: {image: x, networks: [three]}\nnetworks:\n  one: {}\n  two: {}\n  three: {}\n",
        )
        .unwrap();
        let plan = NetPlan::new(&compose).unwrap();
        let run_dir = std::env::temp_dir().join(format!("dstack-netns-{}", std::process::id()));
        std::fs::create_dir_all(&run_dir).unwrap();
        let (plan2, dir2) = (plan.clone(), run_dir.clone());
        // The "guest": a namespace of its own, so this host is untouched. Its
        // thread lives until the test ends: the namespace (bridges and all)
        // would go with it.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (set_tx, set_rx) = std::sync::mpsc::channel();
        let guest_thread = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            set_tx.send(set_up(&plan2, &dir2)).unwrap();
            let _ = done_rx.recv();
        });
        let guest = set_rx.recv().unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            guest.expect("set_up");
            let address = |s: &str, net: &str| {
                plan.namespaces[s]
                    .links
                    .iter()
                    .find(|l| plan.bridges[l.bridge].network == net)
                    .unwrap()
                    .address
            };
            // A listener in b (on both its networks) and one in d.
            let listen = |s: &str| {
                in_namespace(&netns_path(&run_dir, s), || {
                    let l = TcpListener::bind("0.0.0.0:7000").unwrap();
                    std::thread::spawn(move || for _ in l.incoming() {});
                })
            };
            listen("b");
            listen("d");
            let reach = |from: &str, to: std::net::Ipv4Addr| {
                in_namespace(&netns_path(&run_dir, from), move || {
                    TcpStream::connect_timeout(
                        &SocketAddr::from((to, 7000)),
                        Duration::from_millis(500),
                    )
                    .is_ok()
                })
            };
            assert!(reach("a", address("b", "one")), "same network");
            assert!(reach("c", address("b", "two")), "same network");
            // b's address on one is not routed to from two, nor is d's.
            assert!(!reach("c", address("b", "one")), "across networks");
            assert!(!reach("a", address("d", "three")), "across networks");
            assert!(!reach("d", address("b", "two")), "across networks");
            // The default route leads to the guest through the first network.
            assert_eq!(
                plan.namespaces["c"].default_gateway,
                Some(plan.bridges[2].gateway)
            );
        }));
        tear_down(&plan, &run_dir);
        let _ = done_tx.send(());
        guest_thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&run_dir);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn firewall_forwards_out_of_open_networks_only() {
        let compose = dstack_compose::Compose::parse(
            "services:\n  a: {image: x, networks: [open]}\n  b: {image: x, networks: [closed]}\nnetworks:\n  open: {}\n  closed: {internal: true}\n",
        )
        .unwrap();
        let plan = NetPlan::new(&compose).unwrap();
        let text = firewall(&plan).unwrap().to_string();
        // closed is dsn1, open dsn2.
        assert!(
            text.contains("iifname \"dsn2\" oifname != \"dsn*\" accept"),
            "{text}"
        );
        assert!(!text.contains("iifname \"dsn1\" oifname != "), "{text}");
        assert!(
            text.contains("iifname \"dsn1\" oifname \"dsn1\" accept"),
            "{text}"
        );
        assert!(text.contains("policy drop;"), "{text}");
        assert!(
            text.contains("ip saddr 10.89.0.0/16 oifname != \"dsn*\" masquerade"),
            "{text}"
        );
    }
}
