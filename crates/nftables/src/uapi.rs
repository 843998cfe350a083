//! The kernel's numbers, transcribed from the UAPI headers
//! `linux/netlink.h`, `linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nf_tables.h`, `linux/netfilter.h` and
//! `linux/netfilter/nf_conntrack_common.h` (Debian's linux-libc-dev 6.1).
//! These are ABI: the kernel only ever appends to its enums, so they hold for
//! every kernel the guest or CI runs.

// linux/netlink.h
pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 0x2;
pub(crate) const NLM_F_REQUEST: u16 = 0x01;
pub(crate) const NLM_F_ACK: u16 = 0x04;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
/// In an error reply: the echoed request was cut to its header (we ask for
/// that with `NETLINK_CAP_ACK`).
pub(crate) const NLM_F_CAPPED: u16 = 0x100;
/// In an error reply: extended-ack attributes follow the echoed request.
pub(crate) const NLM_F_ACK_TLVS: u16 = 0x200;
/// `enum nlmsgerr_attrs`: the kernel's error text.
pub(crate) const NLMSGERR_ATTR_MSG: u16 = 1;
pub(crate) const NLA_HDRLEN: usize = 4;
pub(crate) const NLA_F_NESTED: u16 = 1 << 15;
pub(crate) const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

// linux/netfilter/nfnetlink.h
/// `NLMSG_MIN_TYPE` (0x10).
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNETLINK_V0: u8 = 0;
/// `struct nfgenmsg`: family, version, big-endian res_id.
#[cfg(test)]
pub(crate) const NFGENMSG_LEN: usize = 4;

// linux/netfilter.h
pub(crate) const NFPROTO_UNSPEC: u8 = 0;
pub(crate) const NFPROTO_INET: u8 = 1;
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NF_DROP: u32 = 0;
pub(crate) const NF_ACCEPT: u32 = 1;
/// `enum nf_inet_hooks`.
pub(crate) const NF_INET_PRE_ROUTING: u32 = 0;
pub(crate) const NF_INET_LOCAL_IN: u32 = 1;
pub(crate) const NF_INET_FORWARD: u32 = 2;
pub(crate) const NF_INET_LOCAL_OUT: u32 = 3;
pub(crate) const NF_INET_POST_ROUTING: u32 = 4;

// linux/netfilter/nf_tables.h: `enum nf_tables_msg_types`.
pub(crate) const NFT_MSG_NEWTABLE: u8 = 0;
pub(crate) const NFT_MSG_DELTABLE: u8 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u8 = 3;
pub(crate) const NFT_MSG_NEWRULE: u8 = 6;

/// `enum nft_registers`: the verdict register and the first 16-byte data
/// register (what nft itself loads into for these matches).
pub(crate) const NFT_REG_VERDICT: u32 = 0;
pub(crate) const NFT_REG_1: u32 = 1;

pub(crate) const NFTA_LIST_ELEM: u16 = 1;

pub(crate) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(crate) const NFTA_HOOK_PRIORITY: u16 = 2;

pub(crate) const NFTA_TABLE_NAME: u16 = 1;
pub(crate) const NFTA_TABLE_FLAGS: u16 = 2;

pub(crate) const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
pub(crate) const NFTA_CHAIN_HOOK: u16 = 4;
pub(crate) const NFTA_CHAIN_POLICY: u16 = 5;
pub(crate) const NFTA_CHAIN_TYPE: u16 = 7;

pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;

pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;

pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;

pub(crate) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(crate) const NFTA_IMMEDIATE_DATA: u16 = 2;

pub(crate) const NFTA_CMP_SREG: u16 = 1;
pub(crate) const NFTA_CMP_OP: u16 = 2;
pub(crate) const NFTA_CMP_DATA: u16 = 3;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_CMP_NEQ: u32 = 1;

pub(crate) const NFTA_BITWISE_SREG: u16 = 1;
pub(crate) const NFTA_BITWISE_DREG: u16 = 2;
pub(crate) const NFTA_BITWISE_LEN: u16 = 3;
pub(crate) const NFTA_BITWISE_MASK: u16 = 4;
pub(crate) const NFTA_BITWISE_XOR: u16 = 5;

pub(crate) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(crate) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(crate) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(crate) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(crate) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(crate) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

pub(crate) const NFTA_META_DREG: u16 = 1;
pub(crate) const NFTA_META_KEY: u16 = 2;
pub(crate) const NFT_META_IIFNAME: u32 = 6;
pub(crate) const NFT_META_OIFNAME: u32 = 7;
pub(crate) const NFT_META_NFPROTO: u32 = 15;
pub(crate) const NFT_META_L4PROTO: u32 = 16;

pub(crate) const NFTA_CT_DREG: u16 = 1;
pub(crate) const NFTA_CT_KEY: u16 = 2;
pub(crate) const NFT_CT_STATE: u32 = 0;

// linux/netfilter/nf_conntrack_common.h: NF_CT_STATE_INVALID_BIT and
// NF_CT_STATE_BIT(IP_CT_ESTABLISHED / IP_CT_RELATED / IP_CT_NEW), i.e.
// 1 << (ctinfo + 1).
pub(crate) const NF_CT_STATE_INVALID_BIT: u32 = 1 << 0;
pub(crate) const NF_CT_STATE_ESTABLISHED_BIT: u32 = 1 << 1;
pub(crate) const NF_CT_STATE_RELATED_BIT: u32 = 1 << 2;
pub(crate) const NF_CT_STATE_NEW_BIT: u32 = 1 << 3;

// linux/if.h
pub(crate) const IFNAMSIZ: usize = 16;

// linux/in.h
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

// Offsets in the IPv4 header (RFC 791) and the TCP/UDP header.
pub(crate) const IPV4_SADDR_OFFSET: u32 = 12;
pub(crate) const IPV4_DADDR_OFFSET: u32 = 16;
pub(crate) const TH_DPORT_OFFSET: u32 = 2;
