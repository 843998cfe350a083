//! Only the gateways reach the guest's WireGuard port: upstream's iptables
//! chain `DSTACK_WG` (UPSTREAM §10.5) as an nftables table of its own.
//!
//! A table of its own, not a chain of the container-network table
//! (`containers::netns`, table `dstack`): each is replaced whole when it is
//! applied, so neither may hold the other's rules, and the gateway can be
//! set up, or set up again, whenever it is ready.

use std::net::Ipv4Addr;

use dstack_nftables::{
    BaseChain, Chain, ChainType, CmpOp, Family, Hook, IfName, Ipv4Cidr, L4Proto, Match, NftError,
    Policy, Rule, Ruleset, Statement, Table,
};

/// The table (upstream's chain name, in nft's spelling).
pub(crate) const TABLE: &str = "dstack_wg";

/// UDP to `port` is accepted from each of `gateways` arriving on `uplink`
/// (the guest's network interface; `None`: any), and dropped from anything
/// else, on any interface. Other traffic is left alone.
pub(crate) fn table(
    uplink: Option<&str>,
    gateways: &[Ipv4Addr],
    port: u16,
) -> Result<Table, NftError> {
    let wireguard = || [Match::L4Proto(L4Proto::Udp), Match::ThDport(port)];
    let mut input = Chain::base(
        "input",
        BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority: 0,
            policy: Policy::Accept,
        },
    );
    let mut seen = Vec::new();
    for gateway in gateways {
        if seen.contains(gateway) {
            continue;
        }
        seen.push(*gateway);
        let mut matches = Vec::new();
        if let Some(uplink) = uplink {
            matches.push(Match::Iifname(CmpOp::Eq, IfName::exact(uplink)?));
        }
        matches.extend(wireguard());
        matches.push(Match::IpSaddr(CmpOp::Eq, Ipv4Cidr::new(*gateway, 32)?));
        input = input.rule(Rule::new(matches, Statement::Accept));
    }
    input = input.rule(Rule::new(wireguard(), Statement::Drop));
    Ok(Table::new(Family::Ip, TABLE).chain(input))
}

/// Replaces the table with `table` in the caller's network namespace.
/// Blocking: call from a blocking thread.
pub(crate) fn apply(table: Table) -> Result<(), NftError> {
    Ruleset::new().replace_table(table).apply()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_gateways_on_the_uplink_and_drops_the_rest() {
        let gateways = [
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(192, 0, 2, 7),
            Ipv4Addr::new(10, 0, 2, 2),
        ];
        let text = table(Some("eth0"), &gateways, 9182).unwrap().to_string();
        assert_eq!(
            text,
            "table ip dstack_wg {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname \"eth0\" meta l4proto udp th dport 9182 ip saddr 10.0.2.2/32 accept
    iifname \"eth0\" meta l4proto udp th dport 9182 ip saddr 192.0.2.7/32 accept
    meta l4proto udp th dport 9182 drop
  }
}
"
        );
    }

    #[test]
    fn without_an_uplink_any_interface_is_trusted_for_the_gateways() {
        let text = table(None, &[Ipv4Addr::new(10, 0, 2, 2)], 9182)
            .unwrap()
            .to_string();
        assert!(
            text.contains("\n    meta l4proto udp th dport 9182 ip saddr 10.0.2.2/32 accept\n"),
            "{text}"
        );
        // No gateway: the port is closed to everyone.
        let closed = table(Some("eth0"), &[], 9182).unwrap();
        assert_eq!(closed.chains[0].rules.len(), 1);
        let gateway = [Ipv4Addr::new(10, 0, 2, 2)];
        assert!(table(Some("an-interface-name-too-long"), &gateway, 1).is_err());
    }

    /// As root, in a network namespace of its own: the kernel takes the
    /// table, and takes it again (replaced, not added to).
    #[test]
    fn the_kernel_takes_the_table() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root (a network namespace)");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let gateways = [Ipv4Addr::new(10, 0, 2, 2)];
            for _ in 0..2 {
                match apply(table(Some("lo"), &gateways, 9182).unwrap()) {
                    Ok(()) => {}
                    Err(e) if e.is_unsupported() => {
                        eprintln!("SKIP: no nf_tables here: {e}");
                        return;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .join()
        .unwrap();
    }
}
