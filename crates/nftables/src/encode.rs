//! nf_tables netlink messages, byte for byte: one batch (BATCH_BEGIN,
//! requests, BATCH_END) in one buffer, as the kernel wants it in one
//! `sendmsg`. The requests are laid out as nft 1.0.6 lays out the same
//! ruleset (same expressions, same attribute order), so the golden test can
//! compare with nft's own bytes; the only difference is that every request
//! asks for an acknowledgement.
//!
//! Netlink headers (message and attribute) are in host byte order; the
//! nf_tables attribute values the kernel reads with `nla_get_be32` (hooks,
//! priorities, policies, registers, verdicts, lengths, offsets, operators)
//! are big-endian; cmp/bitwise data is compared with register contents, so
//! it is in the packet's (network) order for packet fields and in host
//! order for the kernel's own u32s (ct state).

use crate::model::{Chain, CmpOp, Family, Ipv4Cidr, Match, Rule, Statement, Table};
use crate::uapi::*;

/// One request of a batch, for naming it when the kernel refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) seq: u32,
    /// In nft's syntax, e.g. `add chain ip dstack forward`.
    pub(crate) what: String,
}

/// An encoded batch and what it contains.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) bytes: Vec<u8>,
    /// The sequence number of BATCH_BEGIN: errors about the whole batch
    /// (no nf_tables, no permission, failed commit) answer that message.
    pub(crate) begin_seq: u32,
    /// Every request between BEGIN and END; each asks for an ack.
    pub(crate) requests: Vec<Request>,
}

/// Encodes "replace each of `tables`" as one batch numbered from `seq`.
///
/// Per table: add it (so the delete below cannot fail on a missing table),
/// delete it with whatever an earlier apply left in it, add it again with
/// its chains, then the rules. The kernel commits the batch atomically, so
/// packets see the old table or the new one, never none.
pub(crate) fn encode(tables: &[Table], seq: u32) -> Batch {
    let mut batch = Writer::new(seq);
    for table in tables {
        let family = table.family;
        batch.request(
            NFT_MSG_NEWTABLE,
            0,
            family,
            format!("add table {family} {}", table.name),
            |a| new_table_attrs(a, table),
        );
        batch.request(
            NFT_MSG_DELTABLE,
            0,
            family,
            format!("delete table {family} {}", table.name),
            |a| a.put_str(NFTA_TABLE_NAME, &table.name),
        );
        batch.request(
            NFT_MSG_NEWTABLE,
            0,
            family,
            format!("add table {family} {}", table.name),
            |a| new_table_attrs(a, table),
        );
        // Chains first, then rules, as nft orders them.
        for chain in &table.chains {
            let what = match &chain.base {
                Some(base) => format!(
                    "add chain {family} {} {} {{ {base} }}",
                    table.name, chain.name
                ),
                None => format!("add chain {family} {} {}", table.name, chain.name),
            };
            batch.request(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, what, |a| {
                chain_attrs(a, table, chain)
            });
        }
        for chain in &table.chains {
            for rule in &chain.rules {
                let what = format!("add rule {family} {} {} {rule}", table.name, chain.name);
                // CREATE: the kernel refuses a new rule without it; APPEND:
                // after the chain's other rules, in the order given.
                batch.request(
                    NFT_MSG_NEWRULE,
                    NLM_F_CREATE | NLM_F_APPEND,
                    family,
                    what,
                    |a| rule_attrs(a, table, chain, rule),
                );
            }
        }
    }
    batch.finish()
}

fn new_table_attrs(a: &mut Attrs<'_>, table: &Table) {
    a.put_str(NFTA_TABLE_NAME, &table.name);
    // No flags: an active table, not dormant.
    a.put_be32(NFTA_TABLE_FLAGS, 0);
}

fn chain_attrs(a: &mut Attrs<'_>, table: &Table, chain: &Chain) {
    a.put_str(NFTA_CHAIN_TABLE, &table.name);
    a.put_str(NFTA_CHAIN_NAME, &chain.name);
    if let Some(base) = &chain.base {
        a.put_str(NFTA_CHAIN_TYPE, base.kind.name());
        a.put_be32(NFTA_CHAIN_POLICY, base.policy.verdict());
        a.nest(NFTA_CHAIN_HOOK, |h| {
            h.put_be32(NFTA_HOOK_HOOKNUM, base.hook.number());
            h.put_be32(NFTA_HOOK_PRIORITY, base.priority.cast_unsigned());
        });
    }
}

fn rule_attrs(a: &mut Attrs<'_>, table: &Table, chain: &Chain, rule: &Rule) {
    a.put_str(NFTA_RULE_TABLE, &table.name);
    a.put_str(NFTA_RULE_CHAIN, &chain.name);
    a.nest(NFTA_RULE_EXPRESSIONS, |list| {
        let mut ipv4_checked = false;
        for m in &rule.matches {
            if let Match::IpSaddr(..) | Match::IpDaddr(..) = m
                && table.family == Family::Inet
                && !ipv4_checked
            {
                // An inet table sees IPv6 too, where these offsets hold
                // other fields: check for IPv4 first (once), as nft does.
                meta_load(list, NFT_META_NFPROTO);
                cmp(list, CmpOp::Eq, &[NFPROTO_IPV4]);
                ipv4_checked = true;
            }
            match_exprs(list, m);
        }
        statement_exprs(list, rule.statement);
    });
}

fn match_exprs(list: &mut Attrs<'_>, m: &Match) {
    match m {
        Match::Iifname(op, name) => {
            meta_load(list, NFT_META_IIFNAME);
            cmp(list, *op, &name.cmp_bytes());
        }
        Match::Oifname(op, name) => {
            meta_load(list, NFT_META_OIFNAME);
            cmp(list, *op, &name.cmp_bytes());
        }
        Match::IpSaddr(op, net) => ipv4_prefix(list, IPV4_SADDR_OFFSET, *op, net),
        Match::IpDaddr(op, net) => ipv4_prefix(list, IPV4_DADDR_OFFSET, *op, net),
        Match::L4Proto(proto) => {
            meta_load(list, NFT_META_L4PROTO);
            cmp(list, CmpOp::Eq, &[proto.number()]);
        }
        Match::ThDport(port) => {
            payload_load(list, NFT_PAYLOAD_TRANSPORT_HEADER, TH_DPORT_OFFSET, 2);
            cmp(list, CmpOp::Eq, &port.to_be_bytes());
        }
        Match::CtState(states) => {
            let mask = states.iter().fold(0, |mask, s| mask | s.bit());
            expr(list, "ct", |d| {
                d.put_be32(NFTA_CT_KEY, NFT_CT_STATE);
                d.put_be32(NFTA_CT_DREG, NFT_REG_1);
            });
            // The state is a host-order u32 bitmask: any of the bits set.
            bitwise_and(list, &mask.to_ne_bytes());
            cmp(list, CmpOp::Neq, &0u32.to_ne_bytes());
        }
    }
}

/// An address in or not in `net`. A byte-aligned prefix compares just its
/// bytes (nothing to mask); any other length masks the whole address first.
/// Same choice as nft, so both read back the same.
fn ipv4_prefix(list: &mut Attrs<'_>, offset: u32, op: CmpOp, net: &Ipv4Cidr) {
    let len = net.prefix_len();
    let addr = net.addr().octets();
    if len.is_multiple_of(8) && len > 0 {
        let bytes = len / 8;
        payload_load(list, NFT_PAYLOAD_NETWORK_HEADER, offset, u32::from(bytes));
        cmp(list, op, &addr[..usize::from(bytes)]);
    } else {
        payload_load(list, NFT_PAYLOAD_NETWORK_HEADER, offset, 4);
        bitwise_and(list, &net.mask().octets());
        cmp(list, op, &addr);
    }
}

fn statement_exprs(list: &mut Attrs<'_>, statement: Statement) {
    match statement {
        Statement::Accept => verdict(list, NF_ACCEPT),
        Statement::Drop => verdict(list, NF_DROP),
        // No attributes: the defaults, masquerade to the primary address of
        // the outgoing interface with any source port.
        Statement::Masquerade => expr(list, "masq", |_| {}),
    }
}

/// One element of a rule's expression list.
fn expr(list: &mut Attrs<'_>, name: &str, data: impl FnOnce(&mut Attrs<'_>)) {
    list.nest(NFTA_LIST_ELEM, |e| {
        e.put_str(NFTA_EXPR_NAME, name);
        e.nest(NFTA_EXPR_DATA, data);
    });
}

fn meta_load(list: &mut Attrs<'_>, key: u32) {
    expr(list, "meta", |d| {
        d.put_be32(NFTA_META_KEY, key);
        d.put_be32(NFTA_META_DREG, NFT_REG_1);
    });
}

fn payload_load(list: &mut Attrs<'_>, base: u32, offset: u32, len: u32) {
    expr(list, "payload", |d| {
        d.put_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        d.put_be32(NFTA_PAYLOAD_BASE, base);
        d.put_be32(NFTA_PAYLOAD_OFFSET, offset);
        d.put_be32(NFTA_PAYLOAD_LEN, len);
    });
}

/// reg1 = reg1 & mask (the kernel's form is `(reg & mask) ^ xor`).
fn bitwise_and(list: &mut Attrs<'_>, mask: &[u8]) {
    let len = u32::try_from(mask.len()).expect("mask of a register's size");
    expr(list, "bitwise", |d| {
        d.put_be32(NFTA_BITWISE_SREG, NFT_REG_1);
        d.put_be32(NFTA_BITWISE_DREG, NFT_REG_1);
        d.put_be32(NFTA_BITWISE_LEN, len);
        data_value(d, NFTA_BITWISE_MASK, mask);
        data_value(d, NFTA_BITWISE_XOR, &vec![0; mask.len()]);
    });
}

/// Ends the rule unless reg1's first `data.len()` bytes compare as `op` says.
fn cmp(list: &mut Attrs<'_>, op: CmpOp, data: &[u8]) {
    expr(list, "cmp", |d| {
        d.put_be32(NFTA_CMP_SREG, NFT_REG_1);
        d.put_be32(NFTA_CMP_OP, op.code());
        data_value(d, NFTA_CMP_DATA, data);
    });
}

fn verdict(list: &mut Attrs<'_>, code: u32) {
    expr(list, "immediate", |d| {
        d.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        d.nest(NFTA_IMMEDIATE_DATA, |data| {
            data.nest(NFTA_DATA_VERDICT, |v| v.put_be32(NFTA_VERDICT_CODE, code));
        });
    });
}

fn data_value(a: &mut Attrs<'_>, ty: u16, bytes: &[u8]) {
    a.nest(ty, |d| d.put(NFTA_DATA_VALUE, bytes));
}

/// Appends netlink messages to one buffer, numbering them.
struct Writer {
    bytes: Vec<u8>,
    begin_seq: u32,
    next_seq: u32,
    requests: Vec<Request>,
}

impl Writer {
    fn new(seq: u32) -> Self {
        let mut w = Writer {
            bytes: Vec::new(),
            begin_seq: seq,
            next_seq: seq,
            requests: Vec::new(),
        };
        w.batch_marker(NFNL_MSG_BATCH_BEGIN);
        w
    }

    /// BEGIN and END: no ack asked (kernels before 6.10 never send one for
    /// them, so waiting for it would hang); res_id names the subsystem the
    /// batch is for.
    fn batch_marker(&mut self, ty: u16) {
        self.message(
            ty,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
    }

    /// An nf_tables request that asks for an ack.
    fn request(
        &mut self,
        msg: u8,
        flags: u16,
        family: Family,
        what: String,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg);
        let seq = self.message(
            ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family.nfproto(),
            0,
            attrs,
        );
        self.requests.push(Request { seq, what });
    }

    /// Appends one message (nlmsghdr, nfgenmsg, attributes); returns its
    /// sequence number.
    fn message(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) -> u32 {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]); // nlmsg_len, set below
        self.bytes.extend_from_slice(&ty.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel fills in our port.
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.push(family);
        self.bytes.push(NFNETLINK_V0);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut Attrs(&mut self.bytes));
        let len = u32::try_from(self.bytes.len() - start).expect("netlink message over 4 GiB");
        self.bytes[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    fn finish(mut self) -> Batch {
        self.batch_marker(NFNL_MSG_BATCH_END);
        Batch {
            bytes: self.bytes,
            begin_seq: self.begin_seq,
            requests: self.requests,
        }
    }
}

/// Appends netlink attributes (`struct nlattr`, each padded to 4 bytes).
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, ty: u16, data: &[u8]) {
        let start = self.header(ty);
        self.0.extend_from_slice(data);
        self.close(start);
    }

    /// A NUL-terminated string (NLA_STRING / NLA_NUL_STRING).
    fn put_str(&mut self, ty: u16, s: &str) {
        let start = self.header(ty);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self.close(start);
    }

    fn put_be32(&mut self, ty: u16, value: u32) {
        self.put(ty, &value.to_be_bytes());
    }

    /// An attribute whose payload is attributes (NLA_F_NESTED set, as the
    /// kernel's strict parsing of newer attributes requires).
    fn nest(&mut self, ty: u16, inner: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.header(ty | NLA_F_NESTED);
        inner(&mut Attrs(self.0));
        self.close(start);
    }

    fn header(&mut self, ty: u16) -> usize {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 2]); // nla_len, set by close
        self.0.extend_from_slice(&ty.to_ne_bytes());
        start
    }

    /// Sets nla_len (header and payload, without padding), then pads.
    fn close(&mut self, start: usize) {
        let len = u16::try_from(self.0.len() - start)
            .expect("netlink attribute over 64 KiB: a rule with hundreds of matches");
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        let padded = self.0.len().next_multiple_of(4);
        self.0.resize(padded, 0);
    }
}
