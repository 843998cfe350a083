//! The ruleset as typed values: tables, chains, rules, matches, statements.
//! Every value here encodes to something the kernel accepts in shape; what
//! only the kernel can judge (a hook a chain type does not support, a name
//! already taken) comes back from `apply` as a named error.
//!
//! `Display` prints nft's syntax, so an error can show the rule the kernel
//! refused the way a person would have written it.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::NftError;
use crate::uapi;

/// The address family of a table: which packets its base chains see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only (`table ip`).
    Ip,
    /// IPv4 and IPv6 (`table inet`); `ip saddr`/`ip daddr` matches then also
    /// check that the packet is IPv4, as nft does.
    Inet,
}

impl Family {
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Family::Ip => uapi::NFPROTO_IPV4,
            Family::Inet => uapi::NFPROTO_INET,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ip => "ip",
            Family::Inet => "inet",
        })
    }
}

/// A table and everything in it. Applied with [`crate::Ruleset::replace_table`],
/// it is the whole content of that table afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub chains: Vec<Chain>,
}

impl Table {
    /// An empty table.
    pub fn new(family: Family, name: impl Into<String>) -> Self {
        Self {
            family,
            name: name.into(),
            chains: Vec::new(),
        }
    }

    /// Adds `chain` after the chains already there.
    pub fn chain(mut self, chain: Chain) -> Self {
        self.chains.push(chain);
        self
    }
}

/// A chain: a base chain (attached to a netfilter hook) or a regular one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    /// In evaluation order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A base chain, without rules yet.
    pub fn base(name: impl Into<String>, base: BaseChain) -> Self {
        Self {
            name: name.into(),
            base: Some(base),
            rules: Vec::new(),
        }
    }

    /// A regular chain (no hook), without rules yet.
    pub fn regular(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base: None,
            rules: Vec::new(),
        }
    }

    /// Appends `rule`.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }
}

/// What makes a chain a base chain: `type KIND hook HOOK priority N; policy P;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub(crate) fn number(self) -> u32 {
        match self {
            Hook::Prerouting => uapi::NF_INET_PRE_ROUTING,
            Hook::Input => uapi::NF_INET_LOCAL_IN,
            Hook::Forward => uapi::NF_INET_FORWARD,
            Hook::Output => uapi::NF_INET_LOCAL_OUT,
            Hook::Postrouting => uapi::NF_INET_POST_ROUTING,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// What a base chain does with a packet no rule gave a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

impl Policy {
    pub(crate) fn verdict(self) -> u32 {
        match self {
            Policy::Accept => uapi::NF_ACCEPT,
            Policy::Drop => uapi::NF_DROP,
        }
    }
}

/// A rule: every match must hold for the statement to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Checked in this order, as nft would with the same rule text.
    pub matches: Vec<Match>,
    pub statement: Statement,
}

impl Rule {
    pub fn new(matches: impl IntoIterator<Item = Match>, statement: Statement) -> Self {
        Self {
            matches: matches.into_iter().collect(),
            statement,
        }
    }
}

/// Equal or not equal; for an address prefix, in it or not in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
}

impl CmpOp {
    pub(crate) fn code(self) -> u32 {
        match self {
            CmpOp::Eq => uapi::NFT_CMP_EQ,
            CmpOp::Neq => uapi::NFT_CMP_NEQ,
        }
    }

    /// nft's spelling in front of the value ("" for equality).
    fn prefix(self) -> &'static str {
        match self {
            CmpOp::Eq => "",
            CmpOp::Neq => "!= ",
        }
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `iifname [!=] NAME`: the interface the packet came in on.
    Iifname(CmpOp, IfName),
    /// `oifname [!=] NAME`: the interface the packet goes out on.
    Oifname(CmpOp, IfName),
    /// `ip saddr [!=] NET/LEN`.
    IpSaddr(CmpOp, Ipv4Cidr),
    /// `ip daddr [!=] NET/LEN`.
    IpDaddr(CmpOp, Ipv4Cidr),
    /// `meta l4proto PROTO`.
    L4Proto(L4Proto),
    /// `th dport PORT`: the destination port in the transport header. It
    /// reads bytes 2-3 of whatever transport header there is, so put an
    /// [`Match::L4Proto`] before it (nft's `udp dport` is exactly that pair).
    ThDport(u16),
    /// `ct state S1,S2,...`: the connection is in any of these states (so
    /// an empty list matches nothing).
    CtState(Vec<CtState>),
}

/// An interface name to compare with: the exact name, or a prefix (nft's
/// `"dsn*"`), which compares only the prefix's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfName {
    Exact(String),
    Prefix(String),
}

impl IfName {
    /// The interface named exactly `name` (at most 15 bytes, as the kernel's
    /// IFNAMSIZ allows, without NUL).
    pub fn exact(name: &str) -> Result<Self, NftError> {
        check_ifname(name)?;
        Ok(IfName::Exact(name.to_owned()))
    }

    /// Every interface whose name starts with `prefix` (non-empty: an empty
    /// prefix would compare zero bytes, which the kernel refuses).
    pub fn prefix(prefix: &str) -> Result<Self, NftError> {
        check_ifname(prefix)?;
        Ok(IfName::Prefix(prefix.to_owned()))
    }

    /// nft's spelling: `"dsn*"` is a prefix, anything else an exact name.
    pub fn parse(text: &str) -> Result<Self, NftError> {
        match text.strip_suffix('*') {
            Some(prefix) => Self::prefix(prefix),
            None => Self::exact(text),
        }
    }

    /// The bytes the cmp expression compares the meta register with: an
    /// exact name NUL-padded to IFNAMSIZ, like the kernel stores it, so
    /// "eth0" does not also match "eth01"; a prefix as it is.
    pub(crate) fn cmp_bytes(&self) -> Vec<u8> {
        match self {
            IfName::Exact(name) => {
                let mut bytes = name.as_bytes().to_vec();
                bytes.resize(uapi::IFNAMSIZ, 0);
                bytes
            }
            IfName::Prefix(prefix) => prefix.as_bytes().to_vec(),
        }
    }
}

fn check_ifname(name: &str) -> Result<(), NftError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() >= uapi::IFNAMSIZ {
        "longer than 15 bytes"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(NftError::InvalidIfName {
        name: name.to_owned(),
        reason,
    })
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IfName::Exact(name) => write!(f, "\"{name}\""),
            IfName::Prefix(prefix) => write!(f, "\"{prefix}*\""),
        }
    }
}

/// An IPv4 network, `addr/len`. Host bits are cleared, as nft does, so
/// `10.89.1.0/16` is `10.89.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, NftError> {
        if len > 32 {
            return Err(NftError::InvalidPrefixLen { len });
        }
        let addr = Ipv4Addr::from(u32::from(addr) & prefix_mask(len));
        Ok(Self { addr, len })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The netmask, e.g. 255.255.0.0 for /16.
    pub(crate) fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.len))
    }
}

fn prefix_mask(len: u8) -> u32 {
    // A shift by 32 overflows: /0 is the empty mask.
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

impl FromStr for Ipv4Cidr {
    type Err = NftError;

    /// `a.b.c.d/len`, or a bare address for /32.
    fn from_str(text: &str) -> Result<Self, NftError> {
        let invalid = || NftError::InvalidCidr {
            text: text.to_owned(),
        };
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, len.parse().map_err(|_| invalid())?),
            None => (text, 32),
        };
        Ipv4Cidr::new(addr.parse().map_err(|_| invalid())?, len)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub(crate) fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => uapi::IPPROTO_TCP,
            L4Proto::Udp => uapi::IPPROTO_UDP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
        }
    }
}

/// A conntrack state, as `ct state` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    Invalid,
    Established,
    Related,
    New,
}

impl CtState {
    pub(crate) fn bit(self) -> u32 {
        match self {
            CtState::Invalid => uapi::NF_CT_STATE_INVALID_BIT,
            CtState::Established => uapi::NF_CT_STATE_ESTABLISHED_BIT,
            CtState::Related => uapi::NF_CT_STATE_RELATED_BIT,
            CtState::New => uapi::NF_CT_STATE_NEW_BIT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CtState::Invalid => "invalid",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::New => "new",
        }
    }
}

/// What a rule does once all its matches hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement {
    Accept,
    Drop,
    /// Source NAT to the outgoing interface's address; only in a `nat`
    /// chain on the postrouting hook (the kernel refuses it elsewhere).
    Masquerade,
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Iifname(op, name) => write!(f, "iifname {}{name}", op.prefix()),
            Match::Oifname(op, name) => write!(f, "oifname {}{name}", op.prefix()),
            Match::IpSaddr(op, net) => write!(f, "ip saddr {}{net}", op.prefix()),
            Match::IpDaddr(op, net) => write!(f, "ip daddr {}{net}", op.prefix()),
            Match::L4Proto(proto) => write!(f, "meta l4proto {}", proto.name()),
            Match::ThDport(port) => write!(f, "th dport {port}"),
            Match::CtState(states) => {
                f.write_str("ct state ")?;
                for (i, state) in states.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(state.name())?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Statement::Accept => "accept",
            Statement::Drop => "drop",
            Statement::Masquerade => "masquerade",
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.statement)
    }
}

impl fmt::Display for BaseChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} hook {} priority {}; policy {};",
            self.kind.name(),
            self.hook.name(),
            self.priority,
            match self.policy {
                Policy::Accept => "accept",
                Policy::Drop => "drop",
            }
        )
    }
}

/// The table in nft's syntax, as `nft -f` would read it.
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {} {} {{", self.family, self.name)?;
        for chain in &self.chains {
            writeln!(f, "  chain {} {{", chain.name)?;
            if let Some(base) = &chain.base {
                writeln!(f, "    {base}")?;
            }
            for rule in &chain.rules {
                writeln!(f, "    {rule}")?;
            }
            writeln!(f, "  }}")?;
        }
        writeln!(f, "}}")
    }
}
