//! RFC 2136 dynamic updates to the zone's primary server.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::caa::Value;
use hickory_proto::rr::rdata::{A, AAAA, CAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::wire::{exchange, random_id};
use super::{Dns01, DnsError, DnsFuture, TsigKey, caa_issuer_value};

/// How many times [`Rfc2136::set_caa`] re-reads and retries when the CAA
/// records changed between its read and its update.
const CAA_ATTEMPTS: usize = 3;

/// DNS-01 (and CAA) through RFC 2136 dynamic updates to one zone's primary
/// server, TSIG-signed when a key is given.
#[derive(Clone, Debug)]
pub struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    tsig: Option<TsigKey>,
    ttl: u32,
    timeout: Duration,
    propagation_timeout: Duration,
}

/// One CAA record as served (RFC 8659 §4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaaRecord {
    /// The flags octet (128: issuer critical).
    pub flags: u8,
    /// The property tag, e.g. `issue`.
    pub tag: String,
    /// The property value, as sent.
    pub value: String,
}

impl Rfc2136 {
    /// Updates for `zone` go to `server` (the zone's primary), signed with `tsig` if given.
    ///
    /// TXT records get a TTL of 60 s (upstream's default); exchanges time out
    /// after 10 s, and [`Dns01::set_txt`] waits up to 60 s for the record to be served.
    pub fn new(server: SocketAddr, zone: &str, tsig: Option<TsigKey>) -> Result<Self, DnsError> {
        Ok(Self {
            server,
            zone: parse_name(zone)?,
            tsig,
            ttl: 60,
            timeout: Duration::from_secs(10),
            propagation_timeout: Duration::from_secs(60),
        })
    }

    /// Sets the TTL of the records this client adds.
    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long [`Dns01::set_txt`] waits for the server to answer a new record.
    pub fn with_propagation_timeout(mut self, timeout: Duration) -> Self {
        self.propagation_timeout = timeout;
        self
    }

    /// The server updates go to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Adds the TXT record `value` at `name` (no wait; see [`Dns01::set_txt`]).
    pub async fn add_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let owner = self.name_in_zone(name)?;
        let record = Record::from_rdata(owner, self.ttl, RData::TXT(txt(value)));
        self.update(vec![record]).await
    }

    /// Deletes the TXT record `value` at `name`, leaving others (RFC 2136 §2.5.4).
    pub async fn delete_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let owner = self.name_in_zone(name)?;
        self.update(vec![delete_rr(owner, RData::TXT(txt(value)))])
            .await
    }

    /// Adds an A or AAAA record at `name`.
    pub async fn add_address(&self, name: &str, ip: IpAddr) -> Result<(), DnsError> {
        let owner = self.name_in_zone(name)?;
        let rdata = match ip {
            IpAddr::V4(ip) => RData::A(A(ip)),
            IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
        };
        self.update(vec![Record::from_rdata(owner, self.ttl, rdata)])
            .await
    }

    /// The TXT values the server answers at `name` (character strings joined).
    pub async fn query_txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let owner = self.name_in_zone(name)?;
        let response = self.query(&owner, RecordType::TXT).await?;
        Ok(answers(&response, &owner)
            .filter_map(|data| match data {
                RData::TXT(txt) => Some(
                    txt.txt_data()
                        .iter()
                        .map(|chunk| String::from_utf8_lossy(chunk))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Pins issuance for `domain` (its base name, without `*.`) to `ca_domain`,
    /// DNS-01 and `account_uri`, as upstream does: `0 issue` and `0 issuewild`
    /// with [`caa_issuer_value`], replacing every other issue/issuewild record
    /// and keeping other CAA properties (e.g. iodef).
    ///
    /// Upstream guards its several API calls with `;` records; a DNS UPDATE is
    /// atomic, so one message does the swap. It is conditional on the CAA set
    /// read just before (RFC 2136 §2.4.2), so a concurrent change is retried
    /// rather than overwritten.
    pub async fn set_caa(
        &self,
        domain: &str,
        account_uri: &str,
        ca_domain: &str,
    ) -> Result<(), DnsError> {
        let owner = self.name_in_zone(base_name(domain))?;
        let value = caa_issuer_value(ca_domain, account_uri);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = self.query(&owner, RecordType::CAA).await?;
            let existing: Vec<RData> = answers(&response, &owner)
                .filter(|data| matches!(data, RData::CAA(_)))
                .cloned()
                .collect();
            let mut prerequisites = Vec::new();
            let mut updates = Vec::new();
            if existing.is_empty() {
                let mut absent = Record::update0(owner.clone(), 0, RecordType::CAA);
                absent.set_dns_class(DNSClass::NONE);
                prerequisites.push(absent);
            }
            for data in &existing {
                prerequisites.push(Record::from_rdata(owner.clone(), 0, data.clone()));
                if let RData::CAA(caa) = data
                    && (caa.tag().is_issue() || caa.tag().is_issuewild())
                {
                    updates.push(delete_rr(owner.clone(), data.clone()));
                }
            }
            for wild in [false, true] {
                let rdata = RData::CAA(caa(wild, &value));
                updates.push(Record::from_rdata(owner.clone(), self.ttl, rdata));
            }
            match self.update_with(prerequisites, updates).await {
                Err(DnsError::PrerequisiteFailed { .. }) if attempt < CAA_ATTEMPTS => continue,
                result => return result,
            }
        }
    }

    /// Deletes every CAA record of `domain`'s base name.
    pub async fn clear_caa(&self, domain: &str) -> Result<(), DnsError> {
        let owner = self.name_in_zone(base_name(domain))?;
        let mut all = Record::update0(owner, 0, RecordType::CAA);
        all.set_dns_class(DNSClass::ANY);
        self.update(vec![all]).await
    }

    /// The CAA records the server answers for `domain`'s base name.
    pub async fn query_caa(&self, domain: &str) -> Result<Vec<CaaRecord>, DnsError> {
        let owner = self.name_in_zone(base_name(domain))?;
        let response = self.query(&owner, RecordType::CAA).await?;
        Ok(answers(&response, &owner)
            .filter_map(|data| match data {
                RData::CAA(caa) => Some(CaaRecord {
                    flags: caa.flags(),
                    tag: caa.tag().as_str().to_string(),
                    value: String::from_utf8_lossy(caa.raw_value()).into_owned(),
                }),
                _ => None,
            })
            .collect())
    }

    /// Polls the server until it answers `value` at `name`.
    async fn wait_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let start = Instant::now();
        loop {
            if self.query_txt(name).await?.iter().any(|v| v == value) {
                return Ok(());
            }
            if start.elapsed() >= self.propagation_timeout {
                return Err(DnsError::NotVisible {
                    name: name.to_string(),
                    server: self.server,
                    after: self.propagation_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn name_in_zone(&self, name: &str) -> Result<Name, DnsError> {
        let parsed = parse_name(name)?;
        if !self.zone.zone_of(&parsed) {
            return Err(DnsError::NotInZone {
                name: name.to_string(),
                zone: self.zone.to_string(),
            });
        }
        Ok(parsed)
    }

    async fn update(&self, updates: Vec<Record>) -> Result<(), DnsError> {
        self.update_with(Vec::new(), updates).await
    }

    /// One UPDATE message (RFC 2136 §2): zone, prerequisites, updates.
    async fn update_with(
        &self,
        prerequisites: Vec<Record>,
        updates: Vec<Record>,
    ) -> Result<(), DnsError> {
        let mut message = Message::new();
        message
            .set_id(random_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        let mut zone = Query::query(self.zone.clone(), RecordType::SOA);
        zone.set_query_class(DNSClass::IN);
        message.add_query(zone);
        // The prerequisite and update sections sit where a query's answer
        // and authority sections do.
        message.add_answers(prerequisites);
        message.add_name_servers(updates);
        exchange(self.server, message, self.tsig.as_ref(), self.timeout).await?;
        Ok(())
    }

    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Message, DnsError> {
        let mut message = Message::new();
        message
            .set_id(random_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false);
        message.add_query(Query::query(name.clone(), rtype));
        exchange(self.server, message, self.tsig.as_ref(), self.timeout).await
    }
}

impl Dns01 for Rfc2136 {
    fn set_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(async move {
            self.add_txt(name, value).await?;
            self.wait_txt(name, value).await
        })
    }

    fn remove_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(self.delete_txt(name, value))
    }
}

fn parse_name(name: &str) -> Result<Name, DnsError> {
    let mut parsed = Name::from_ascii(name).map_err(|source| DnsError::InvalidName {
        name: name.to_string(),
        source,
    })?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

fn base_name(domain: &str) -> &str {
    domain.strip_prefix("*.").unwrap_or(domain)
}

fn txt(value: &str) -> TXT {
    TXT::new(vec![value.to_string()])
}

/// "Delete an RR from an RRset" (RFC 2136 §2.5.4): class NONE, TTL 0.
fn delete_rr(owner: Name, rdata: RData) -> Record {
    let mut record = Record::from_rdata(owner, 0, rdata);
    record.set_dns_class(DNSClass::NONE);
    record
}

fn answers<'a>(response: &'a Message, owner: &'a Name) -> impl Iterator<Item = &'a RData> {
    response
        .answers()
        .iter()
        .filter(move |record| record.name() == owner)
        .map(Record::data)
}

/// A CAA `issue`/`issuewild` record (flags 0) whose value goes on the wire
/// exactly as given.
///
/// hickory's `CAA::new_issue` re-encodes parameters as `name; key=value`; an
/// opaque value keeps upstream's exact text.
fn caa(wild: bool, value: &str) -> CAA {
    let mut record = if wild {
        CAA::new_issuewild(false, None, Vec::new())
    } else {
        CAA::new_issue(false, None, Vec::new())
    };
    record.set_value(Value::Unknown(value.as_bytes().to_vec()));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caa_values_keep_their_exact_text() {
        let value =
            "pebble;validationmethods=dns-01;accounturi=https://127.0.0.1:14000/my-account/1";
        let record = caa(true, value);
        assert!(record.tag().is_issuewild());
        assert_eq!(record.raw_value(), value.as_bytes());
        assert_eq!(record.flags(), 0);
    }

    #[test]
    fn names_outside_the_zone_are_refused_locally() {
        let dns = Rfc2136::new("127.0.0.1:53".parse().unwrap(), "apps.test", None).unwrap();
        assert!(dns.name_in_zone("_acme-challenge.x.apps.test").is_ok());
        assert!(dns.name_in_zone("apps.test.").is_ok());
        assert!(matches!(
            dns.name_in_zone("_acme-challenge.other.test"),
            Err(DnsError::NotInZone { .. })
        ));
    }
}
