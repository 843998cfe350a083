use super::*;
use crate::apply::Acks;
use crate::encode::encode;
use crate::uapi::*;

include!("../tests/fixtures/dstack_table.rs");

/// The guest's ruleset (the crate docs' example).
fn dstack_table() -> Table {
    dstack_table_with_bridge("dsn1")
}

/// testdata/replace-mixed.nft: the other encodings (inet's IPv4 check,
/// masked prefixes, /0, tcp, other ct states, a regular chain, negative
/// priorities).
fn mixed_table() -> Table {
    let eth0 = IfName::exact("eth0").unwrap();
    Table::new(Family::Inet, "mixed")
        .chain(Chain::regular("aux"))
        .chain(Chain::base(
            "pre",
            BaseChain {
                kind: ChainType::Nat,
                hook: Hook::Prerouting,
                priority: -100,
                policy: Policy::Accept,
            },
        ))
        .chain(Chain {
            name: "out".into(),
            base: Some(BaseChain {
                kind: ChainType::Filter,
                hook: Hook::Output,
                priority: -5,
                policy: Policy::Drop,
            }),
            rules: vec![
                Rule::new(
                    [
                        Match::Iifname(CmpOp::Eq, eth0.clone()),
                        Match::IpSaddr(CmpOp::Eq, "10.80.0.0/12".parse().unwrap()),
                    ],
                    Statement::Accept,
                ),
                Rule::new(
                    [
                        Match::IpDaddr(CmpOp::Neq, "10.0.0.0/31".parse().unwrap()),
                        Match::IpSaddr(CmpOp::Eq, "192.168.0.0/24".parse().unwrap()),
                    ],
                    Statement::Drop,
                ),
                Rule::new(
                    [Match::IpSaddr(CmpOp::Eq, "0.0.0.0/0".parse().unwrap())],
                    Statement::Accept,
                ),
                Rule::new(
                    [Match::L4Proto(L4Proto::Tcp), Match::ThDport(22)],
                    Statement::Accept,
                ),
                Rule::new(
                    [Match::CtState(vec![CtState::New, CtState::Invalid])],
                    Statement::Drop,
                ),
                Rule::new(
                    [
                        Match::Iifname(CmpOp::Neq, eth0),
                        Match::Oifname(CmpOp::Eq, IfName::prefix("veth").unwrap()),
                    ],
                    Statement::Accept,
                ),
            ],
        })
}

/// One netlink message of an encoded batch.
#[derive(Debug)]
struct Msg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    version: u8,
    res_id: u16,
    attrs: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// Splits a batch into messages, checking each length and alignment.
fn messages(mut bytes: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32_at(bytes, 0) as usize;
        assert!(len >= NLMSG_HDRLEN + NFGENMSG_LEN && len <= bytes.len());
        assert_eq!(len % 4, 0, "message length not aligned");
        out.push(Msg {
            ty: u16_at(bytes, 4),
            flags: u16_at(bytes, 6),
            seq: u32_at(bytes, 8),
            pid: u32_at(bytes, 12),
            family: bytes[16],
            version: bytes[17],
            res_id: u16::from_be_bytes([bytes[18], bytes[19]]),
            attrs: &bytes[20..len],
        });
        bytes = &bytes[len..];
    }
    out
}

/// Splits attributes (type with its flag bits, payload), checking that
/// each is padded to 4 bytes with zeros and that they fill `bytes` exactly.
fn attrs(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(u16_at(bytes, 0));
        let padded = len.next_multiple_of(4);
        assert!(
            len >= NLA_HDRLEN && padded <= bytes.len(),
            "attribute overruns"
        );
        assert!(
            bytes[len..padded].iter().all(|b| *b == 0),
            "non-zero padding"
        );
        out.push((u16_at(bytes, 2), &bytes[NLA_HDRLEN..len]));
        bytes = &bytes[padded..];
    }
    out
}

fn attr<'a>(list: &[(u16, &'a [u8])], ty: u16) -> &'a [u8] {
    list.iter().find(|(t, _)| *t == ty).unwrap().1
}

/// Walks every nested attribute of a rule, checking lengths and padding at
/// each level; returns the expression names in order.
fn expression_names(rule_attrs: &[u8]) -> Vec<String> {
    let top = attrs(rule_attrs);
    let (ty, list) = top
        .iter()
        .find(|(t, _)| *t & NLA_TYPE_MASK == NFTA_RULE_EXPRESSIONS)
        .unwrap();
    assert_eq!(*ty, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED);
    let mut names = Vec::new();
    for (ty, elem) in attrs(list) {
        assert_eq!(ty, NFTA_LIST_ELEM | NLA_F_NESTED);
        let parts = attrs(elem);
        assert_eq!(parts[0].0, NFTA_EXPR_NAME);
        let name = parts[0].1;
        assert_eq!(name.last(), Some(&0), "expression name not NUL-terminated");
        names.push(String::from_utf8(name[..name.len() - 1].to_vec()).unwrap());
        assert_eq!(parts[1].0, NFTA_EXPR_DATA | NLA_F_NESTED);
        check_tree(parts[1].1);
    }
    names
}

/// Every nested attribute's payload is itself well-formed attributes.
fn check_tree(bytes: &[u8]) {
    for (ty, payload) in attrs(bytes) {
        if ty & NLA_F_NESTED != 0 {
            check_tree(payload);
        }
    }
}

/// nft's bytes from a hex dump (`xxd -p`).
fn golden(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// Our batch with NLM_F_ACK cleared, the one flag nft does not set.
fn without_acks(mut batch: Vec<u8>) -> Vec<u8> {
    let mut at = 0;
    while at < batch.len() {
        let len = u32_at(&batch, at) as usize;
        let flags = u16_at(&batch, at + 6) & !NLM_F_ACK;
        batch[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        at += len;
    }
    batch
}

// The goldens are what Debian 12's nft 1.0.6 sent for testdata/*.nft (the
// same replace: add table, delete it, add it with its content), captured
// as root on x86_64 in a scratch network namespace:
//   unshare -n strace -e trace=sendmsg -e write=3 -o trace.txt nft -f replace-dstack.nft
// then the hex of strace's dump of the one sendmsg (the batch) written out
// with `xxd -p -c 16`. nft numbered that batch from 0, BEGIN included.
// Netlink headers are host-endian, so these bytes are little-endian's.
#[cfg(target_endian = "little")]
#[test]
fn golden_dstack_ruleset_matches_nft() {
    let ours = Ruleset::new().replace_table(dstack_table()).to_batch(0);
    let nft = golden(include_str!("testdata/replace-dstack.nft-1.0.6.hex"));
    assert_eq!(without_acks(ours), nft);
}

#[cfg(target_endian = "little")]
#[test]
fn golden_mixed_ruleset_matches_nft() {
    let ours = Ruleset::new().replace_table(mixed_table()).to_batch(0);
    let nft = golden(include_str!("testdata/replace-mixed.nft-1.0.6.hex"));
    assert_eq!(without_acks(ours), nft);
}

#[test]
fn golden_sources_are_the_tables() {
    // The .nft files the goldens came from hold these tables (in nft's
    // syntax, up to layout), after the add/delete that replaces them.
    for (table, source) in [
        (dstack_table(), include_str!("testdata/replace-dstack.nft")),
        (mixed_table(), include_str!("testdata/replace-mixed.nft")),
    ] {
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        // nft's shorthand for the pair of matches.
        let text = table
            .to_string()
            .replace("meta l4proto udp th dport", "udp dport");
        let body = source.splitn(3, '\n').nth(2).unwrap();
        assert_eq!(squash(&text), squash(body));
    }
}

#[test]
fn batch_framing() {
    let table = dstack_table();
    let bytes = Ruleset::new().replace_table(table).to_batch(1000);
    let msgs = messages(&bytes);
    let nft = |msg: u8| (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg);
    let expected = [
        (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST),
        (nft(NFT_MSG_NEWTABLE), NLM_F_REQUEST | NLM_F_ACK),
        (nft(NFT_MSG_DELTABLE), NLM_F_REQUEST | NLM_F_ACK),
        (nft(NFT_MSG_NEWTABLE), NLM_F_REQUEST | NLM_F_ACK),
        (
            nft(NFT_MSG_NEWCHAIN),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        ),
        (
            nft(NFT_MSG_NEWCHAIN),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        ),
        (
            nft(NFT_MSG_NEWCHAIN),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        ),
        (
            nft(NFT_MSG_NEWRULE),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        ),
        (
            nft(NFT_MSG_NEWRULE),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        ),
        (
            nft(NFT_MSG_NEWRULE),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        ),
        (
            nft(NFT_MSG_NEWRULE),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        ),
        (
            nft(NFT_MSG_NEWRULE),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        ),
        (NFNL_MSG_BATCH_END, NLM_F_REQUEST),
    ];
    assert_eq!(msgs.len(), expected.len());
    for (seq, (msg, (ty, flags))) in (1000..).zip(msgs.iter().zip(expected)) {
        assert_eq!((msg.ty, msg.flags), (ty, flags), "message {seq}");
        assert_eq!(msg.seq, seq);
        assert_eq!(msg.pid, 0);
        assert_eq!(msg.version, NFNETLINK_V0);
        let marker = ty == NFNL_MSG_BATCH_BEGIN || ty == NFNL_MSG_BATCH_END;
        if marker {
            // The batch names its subsystem, big-endian; no attributes.
            assert_eq!((msg.family, msg.res_id), (NFPROTO_UNSPEC, 10));
            assert!(msg.attrs.is_empty());
        } else {
            assert_eq!((msg.family, msg.res_id), (NFPROTO_IPV4, 0));
        }
    }
    assert_eq!(
        u16::from_be_bytes([bytes[18], bytes[19]]),
        NFNL_SUBSYS_NFTABLES
    );

    // What apply checks off: every request, in order, and nothing else.
    let batch = encode(&[dstack_table()], 1000);
    assert_eq!(batch.bytes, bytes);
    assert_eq!(batch.begin_seq, 1000);
    let seqs: Vec<u32> = batch.requests.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1001..=1011).collect::<Vec<_>>());
    assert_eq!(batch.requests[1].what, "delete table ip dstack");
    assert_eq!(
        batch.requests[4].what,
        "add chain ip dstack forward { type filter hook forward priority 0; policy drop; }"
    );
    assert_eq!(
        batch.requests[9].what,
        "add rule ip dstack input iifname \"eth0\" meta l4proto udp th dport 9182 \
         ip saddr 10.0.2.2/32 accept"
    );
    assert_eq!(
        batch.requests[10].what,
        "add rule ip dstack input meta l4proto udp th dport 9182 drop"
    );
}

#[test]
fn sequence_numbers_wrap() {
    let bytes = Ruleset::new()
        .replace_table(dstack_table())
        .to_batch(u32::MAX);
    let seqs: Vec<u32> = messages(&bytes).iter().map(|m| m.seq).collect();
    assert_eq!(&seqs[..3], &[u32::MAX, 0, 1]);
}

#[test]
fn attributes_are_padded_and_nested() {
    let bytes = Ruleset::new().replace_table(dstack_table()).to_batch(0);
    let msgs = messages(&bytes);

    // "dstack\0" is 7 bytes: nla_len 11, padded to 12.
    let table = attrs(msgs[1].attrs);
    let first = msgs[1].attrs;
    assert_eq!((u16_at(first, 0), u16_at(first, 2)), (11, NFTA_TABLE_NAME));
    assert_eq!(&first[4..12], b"dstack\0\0");
    assert_eq!(attr(&table, NFTA_TABLE_NAME), b"dstack\0");
    assert_eq!(attr(&table, NFTA_TABLE_FLAGS), &[0, 0, 0, 0]);

    // The nat chain: hook and priority big-endian, nested under HOOK.
    let chain = attrs(msgs[4].attrs);
    assert_eq!(attr(&chain, NFTA_CHAIN_NAME), b"postrouting\0");
    assert_eq!(attr(&chain, NFTA_CHAIN_TYPE), b"nat\0");
    assert_eq!(attr(&chain, NFTA_CHAIN_POLICY), &NF_ACCEPT.to_be_bytes());
    let hook = attrs(attr(&chain, NFTA_CHAIN_HOOK | NLA_F_NESTED));
    assert_eq!(attr(&hook, NFTA_HOOK_HOOKNUM), &[0, 0, 0, 4]);
    assert_eq!(attr(&hook, NFTA_HOOK_PRIORITY), &[0, 0, 0, 100]);
    let forward = attrs(msgs[5].attrs);
    assert_eq!(attr(&forward, NFTA_CHAIN_POLICY), &NF_DROP.to_be_bytes());

    let rules: Vec<Vec<String>> = msgs[7..11]
        .iter()
        .map(|m| expression_names(m.attrs))
        .collect();
    let names = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    assert_eq!(rules[0], names("payload cmp meta cmp masq"));
    assert_eq!(rules[1], names("ct bitwise cmp immediate"));
    assert_eq!(rules[2], names("meta cmp meta cmp immediate"));
    assert_eq!(
        rules[3],
        names("meta cmp meta cmp payload cmp payload cmp immediate")
    );
}

#[test]
fn negative_priority_is_twos_complement_big_endian() {
    let table = Table::new(Family::Inet, "t").chain(Chain::base(
        "c",
        BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Output,
            priority: -300,
            policy: Policy::Accept,
        },
    ));
    let bytes = Ruleset::new().replace_table(table).to_batch(0);
    let msgs = messages(&bytes);
    assert_eq!(msgs[4].family, NFPROTO_INET);
    let chain = attrs(msgs[4].attrs);
    let hook = attrs(attr(&chain, NFTA_CHAIN_HOOK | NLA_F_NESTED));
    assert_eq!(attr(&hook, NFTA_HOOK_HOOKNUM), &[0, 0, 0, 3]);
    assert_eq!(attr(&hook, NFTA_HOOK_PRIORITY), &(-300i32).to_be_bytes());
}

#[test]
fn interface_names() {
    assert_eq!(IfName::parse("dsn*").unwrap(), IfName::Prefix("dsn".into()));
    assert_eq!(IfName::parse("eth0").unwrap(), IfName::Exact("eth0".into()));
    assert_eq!(
        IfName::exact("eth0").unwrap().cmp_bytes(),
        b"eth0\0\0\0\0\0\0\0\0\0\0\0\0"
    );
    assert_eq!(IfName::prefix("dsn").unwrap().cmp_bytes(), b"dsn");
    assert!(IfName::exact("fifteen-bytes-x").is_ok());
    for bad in ["", "*", "sixteen-bytes-xx", "a\0b"] {
        let err = IfName::parse(bad).unwrap_err();
        assert!(
            matches!(err, NftError::InvalidIfName { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn ipv4_networks() {
    let net: Ipv4Cidr = "10.89.1.7/16".parse().unwrap();
    assert_eq!(net.to_string(), "10.89.0.0/16");
    assert_eq!(net.mask().to_string(), "255.255.0.0");
    assert_eq!(
        "10.0.2.2".parse::<Ipv4Cidr>().unwrap().to_string(),
        "10.0.2.2/32"
    );
    let all: Ipv4Cidr = "1.2.3.4/0".parse().unwrap();
    assert_eq!(
        (all.to_string().as_str(), all.mask().octets()),
        ("0.0.0.0/0", [0; 4])
    );
    let odd: Ipv4Cidr = "10.95.255.255/12".parse().unwrap();
    assert_eq!(
        (odd.to_string().as_str(), odd.mask().octets()),
        ("10.80.0.0/12", [255, 240, 0, 0])
    );
    assert!(matches!(
        "10.0.0.0/33".parse::<Ipv4Cidr>(),
        Err(NftError::InvalidPrefixLen { len: 33 })
    ));
    for bad in ["10.0.0/8", "10.0.0.0/", "10.0.0.0/x", "::1/128"] {
        assert!(
            matches!(bad.parse::<Ipv4Cidr>(), Err(NftError::InvalidCidr { .. })),
            "{bad}"
        );
    }
}

/// An NLMSG_ERROR reply as the kernel sends it with NETLINK_CAP_ACK: the
/// request's header echoed, then maybe an extended-ack message.
fn reply(seq: u32, errno: i32, message: Option<&str>) -> Vec<u8> {
    let mut payload = (-errno).to_ne_bytes().to_vec();
    // The echoed request header (its content does not matter to us).
    payload.extend_from_slice(&[0; NLMSG_HDRLEN]);
    let mut flags = NLM_F_CAPPED;
    if let Some(text) = message {
        flags |= NLM_F_ACK_TLVS;
        let value = [text.as_bytes(), b"\0"].concat();
        let len = u16::try_from(NLA_HDRLEN + value.len()).unwrap();
        payload.extend_from_slice(&len.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(&value);
        payload.resize(payload.len().next_multiple_of(4), 0);
    }
    let mut msg = u32::try_from(NLMSG_HDRLEN + payload.len())
        .unwrap()
        .to_ne_bytes()
        .to_vec();
    msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&payload);
    msg
}

#[test]
fn every_request_must_be_acked() {
    let batch = encode(&[dstack_table()], 40);
    let mut acks = Acks::new(&batch);
    assert_eq!(acks.pending(), 11);
    // One datagram holding several replies, then one reply per datagram;
    // a reply to someone else's sequence number is no ack.
    let first: Vec<u8> = (41..44).flat_map(|seq| reply(seq, 0, None)).collect();
    acks.read(&first).unwrap();
    assert_eq!(acks.pending(), 8);
    acks.read(&reply(999, 0, None)).unwrap();
    assert_eq!(acks.pending(), 8);
    // The ends of the batch ask for no ack: an ack of BEGIN changes nothing.
    acks.read(&reply(40, 0, None)).unwrap();
    for seq in 44..52 {
        assert_ne!(acks.pending(), 0, "seq {seq}");
        acks.read(&reply(seq, 0, None)).unwrap();
    }
    assert_eq!(acks.pending(), 0);
    // A request acked twice and then refused (after a module load) is
    // refused.
    let err = acks.read(&reply(45, 22, None)).unwrap_err();
    assert!(matches!(err, NftError::Rejected { errno: 22, .. }), "{err}");
}

#[test]
fn a_refused_request_is_named() {
    let batch = encode(&[dstack_table()], 0);
    let mut acks = Acks::new(&batch);
    let datagram = [reply(1, 0, None), reply(7, 95, Some("masq in filter"))].concat();
    let err = acks.read(&datagram).unwrap_err();
    let NftError::Rejected {
        request,
        errno,
        detail,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        request,
        "add rule ip dstack postrouting ip saddr 10.89.0.0/16 oifname != \"dsn*\" masquerade"
    );
    assert_eq!((*errno, detail.as_deref()), (95, Some("masq in filter")));
    assert_eq!(err.errno(), Some(95));
    let text = err.to_string();
    assert!(
        text.starts_with("nf_tables refused `add rule ip dstack postrouting"),
        "{text}"
    );
    assert!(text.ends_with("(os error 95) (masq in filter)"), "{text}");
}

#[test]
fn a_refused_batch_is_reported() {
    let batch = encode(&[dstack_table()], 0);
    let err = Acks::new(&batch).read(&reply(0, 95, None)).unwrap_err();
    assert!(matches!(
        err,
        NftError::BatchRejected {
            errno: 95,
            detail: None
        }
    ));
    assert!(err.is_unsupported());
    let err = Acks::new(&batch).read(&reply(0, 1, None)).unwrap_err();
    assert!(!err.is_unsupported());
    assert!(err.to_string().starts_with("nf_tables refused the batch: "));
}

#[test]
fn malformed_replies_are_errors() {
    let batch = encode(&[dstack_table()], 0);
    let mut long = reply(1, 0, None);
    long[0] = 200; // claims more than the datagram holds
    assert!(matches!(
        Acks::new(&batch).read(&long),
        Err(NftError::MalformedReply(_))
    ));
    let mut short = reply(1, 0, None);
    short.truncate(NLMSG_HDRLEN + 8);
    let len = u32::try_from(short.len()).unwrap();
    short[..4].copy_from_slice(&len.to_ne_bytes());
    assert!(matches!(
        Acks::new(&batch).read(&short),
        Err(NftError::MalformedReply(_))
    ));
}
