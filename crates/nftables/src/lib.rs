//! A small nftables firewall/NAT ruleset, programmed over nfnetlink
//! (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`) in pure Rust:
//! no `nft` binary and no libnftnl in the guest.
//!
//! A [`Ruleset`] is a list of tables to replace. [`Ruleset::to_batch`]
//! encodes it as one nfnetlink batch (pure, for tests); [`Ruleset::apply`]
//! sends that batch in the calling thread's network namespace and checks
//! the kernel's answer to every request. The kernel applies a batch whole
//! or not at all, so a refused rule leaves the previous ruleset in place.
//!
//! The guest's ruleset for its container networks:
//!
//! ```
//! use dstack_nftables::*;
//!
//! # fn main() -> Result<(), NftError> {
//! let bridges = IfName::prefix("dsn")?;
//! let table = Table::new(Family::Ip, "dstack")
//!     .chain(
//!         Chain::base("postrouting", BaseChain {
//!             kind: ChainType::Nat,
//!             hook: Hook::Postrouting,
//!             priority: 100,
//!             policy: Policy::Accept,
//!         })
//!         .rule(Rule::new(
//!             [
//!                 Match::IpSaddr(CmpOp::Eq, "10.89.0.0/16".parse()?),
//!                 Match::Oifname(CmpOp::Neq, bridges.clone()),
//!             ],
//!             Statement::Masquerade,
//!         )),
//!     )
//!     .chain(
//!         Chain::base("forward", BaseChain {
//!             kind: ChainType::Filter,
//!             hook: Hook::Forward,
//!             priority: 0,
//!             policy: Policy::Drop,
//!         })
//!         .rule(Rule::new(
//!             [Match::CtState(vec![CtState::Established, CtState::Related])],
//!             Statement::Accept,
//!         ))
//!         // One such rule per bridge whose services may reach outside.
//!         .rule(Rule::new(
//!             [
//!                 Match::Iifname(CmpOp::Eq, IfName::exact("dsn1")?),
//!                 Match::Oifname(CmpOp::Neq, bridges),
//!             ],
//!             Statement::Accept,
//!         )),
//!     )
//!     .chain(
//!         Chain::base("input", BaseChain {
//!             kind: ChainType::Filter,
//!             hook: Hook::Input,
//!             priority: 0,
//!             policy: Policy::Accept,
//!         })
//!         // Only the gateway reaches WireGuard (the gateway's table in
//!         // the guest, here in one table for brevity).
//!         .rule(Rule::new(
//!             [
//!                 Match::Iifname(CmpOp::Eq, IfName::exact("eth0")?),
//!                 Match::L4Proto(L4Proto::Udp),
//!                 Match::ThDport(9182),
//!                 Match::IpSaddr(CmpOp::Eq, "10.0.2.2/32".parse()?),
//!             ],
//!             Statement::Accept,
//!         ))
//!         .rule(Rule::new(
//!             [Match::L4Proto(L4Proto::Udp), Match::ThDport(9182)],
//!             Statement::Drop,
//!         )),
//!     );
//!
//! // The same, in nft's syntax.
//! assert_eq!(table.to_string(), "\
//! table ip dstack {
//!   chain postrouting {
//!     type nat hook postrouting priority 100; policy accept;
//!     ip saddr 10.89.0.0/16 oifname != \"dsn*\" masquerade
//!   }
//!   chain forward {
//!     type filter hook forward priority 0; policy drop;
//!     ct state established,related accept
//!     iifname \"dsn1\" oifname != \"dsn*\" accept
//!   }
//!   chain input {
//!     type filter hook input priority 0; policy accept;
//!     iifname \"eth0\" meta l4proto udp th dport 9182 ip saddr 10.0.2.2/32 accept
//!     meta l4proto udp th dport 9182 drop
//!   }
//! }
//! ");
//!
//! let ruleset = Ruleset::new().replace_table(table);
//! let batch = ruleset.to_batch(0);
//! assert_eq!(batch.len(), 1892); // what nft 1.0.6 sends for it
//! // ruleset.apply()?; // as root, in the guest's network namespace
//! # Ok(())
//! # }
//! ```

mod apply;
mod encode;
mod error;
mod model;
mod uapi;

pub use error::NftError;
pub use model::{
    BaseChain, Chain, ChainType, CmpOp, CtState, Family, Hook, IfName, Ipv4Cidr, L4Proto, Match,
    Policy, Rule, Statement, Table,
};

/// Tables to replace, in one atomic batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    tables: Vec<Table>,
}

impl Ruleset {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces `table` (same family and name) with this content, or creates
    /// it: whatever chains and rules it had are gone, with no moment where
    /// packets see no table. Other tables are left alone.
    pub fn replace_table(mut self, table: Table) -> Self {
        self.tables.push(table);
        self
    }

    /// The nfnetlink batch [`Ruleset::apply`] sends, its messages numbered
    /// from `seq` (BATCH_BEGIN) on.
    ///
    /// # Panics
    ///
    /// If a rule's expressions exceed a netlink attribute's 64 KiB, i.e. a
    /// rule with hundreds of matches.
    pub fn to_batch(&self, seq: u32) -> Vec<u8> {
        encode::encode(&self.tables, seq).bytes
    }

    /// Applies the ruleset in the calling thread's network namespace
    /// (needs CAP_NET_ADMIN there). All of it or, on error, none of it.
    /// An empty ruleset changes nothing: it only checks that the kernel has
    /// nf_tables ([`NftError::is_unsupported`] otherwise).
    ///
    /// # Panics
    ///
    /// As [`Ruleset::to_batch`].
    pub fn apply(&self) -> Result<(), NftError> {
        // Any sequence numbers do: the socket is new, its replies ours alone.
        apply::apply(&encode::encode(&self.tables, 1))
    }
}

#[cfg(test)]
mod tests;
