//! Plain DNS queries, for what Control must see the way the world does (DNS-01): a CNAME that
//! delegates `_acme-challenge`, a zone's name servers and their addresses, and whether a TXT
//! record is visible on a given server yet. Each is one query through [`exchange`] (UDP, TCP when
//! truncated, bounded by [`OP_TIMEOUT`](super::OP_TIMEOUT)); hickory-proto builds and parses.

use super::exchange::{exchange, unreachable};
use super::rfc2136::{fqdn, records_of};
use super::{DnsError, RecordType, Records};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, RecordType as HickoryType};
use std::net::IpAddr;

/// How a query is asked: of a recursive resolver (RD set), or of an authoritative server (RD
/// clear, and the answer must be authoritative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Resolver,
    Authoritative,
}

async fn query(server: &str, name: &str, kind: HickoryType, ask: Ask) -> Result<Message, DnsError> {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = ask == Ask::Resolver;
    message.add_query(Query::query(fqdn(name)?, kind));
    let answer = exchange(server, message, None).await?;
    match answer.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => {
            return Err(DnsError::BadResponse(format!(
                "{server} answered the query for {name} {kind} with {code}"
            )))
        }
    }
    if ask == Ask::Authoritative && !answer.authoritative {
        return Err(DnsError::ZoneNotFound {
            zone: name.to_string(),
            reason: format!("{server} is not authoritative for {name}"),
        });
    }
    Ok(answer)
}

/// The TXT values at `name` on `server` (empty when there are none).
pub async fn txt(server: &str, name: &str, ask: Ask) -> Result<Vec<String>, DnsError> {
    let answer = query(server, name, HickoryType::TXT, ask).await?;
    Ok(match records_of(&answer, &fqdn(name)?, RecordType::Txt) {
        Some((_, Records::Txt(values))) => values,
        _ => Vec::new(),
    })
}

/// The target of a CNAME at `name`, if there is one (lowercase, without the final dot).
pub async fn cname(server: &str, name: &str, ask: Ask) -> Result<Option<String>, DnsError> {
    let answer = query(server, name, HickoryType::CNAME, ask).await?;
    Ok(match records_of(&answer, &fqdn(name)?, RecordType::Cname) {
        Some((_, Records::Cname(target))) => Some(target),
        _ => None,
    })
}

/// The names of `zone`'s name servers (its NS records), as `server` resolves them.
pub async fn nameservers(server: &str, zone: &str) -> Result<Vec<String>, DnsError> {
    let owner = fqdn(zone)?;
    let answer = query(server, zone, HickoryType::NS, Ask::Resolver).await?;
    let mut names: Vec<String> = answer
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match &r.data {
            RData::NS(ns) => Some(ns.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The addresses of `host` (A and AAAA), as `server` resolves them.
pub async fn addresses(server: &str, host: &str) -> Result<Vec<IpAddr>, DnsError> {
    let mut found = Vec::new();
    for kind in [RecordType::A, RecordType::Aaaa] {
        let hickory = match kind {
            RecordType::A => HickoryType::A,
            _ => HickoryType::AAAA,
        };
        let answer = query(server, host, hickory, Ask::Resolver).await?;
        match records_of(&answer, &fqdn(host)?, kind) {
            Some((_, Records::A(v))) => found.extend(v.into_iter().map(IpAddr::V4)),
            Some((_, Records::Aaaa(v))) => found.extend(v.into_iter().map(IpAddr::V6)),
            _ => {}
        }
    }
    Ok(found)
}

/// The first `nameserver` of `/etc/resolv.conf` as `ip:53`: the resolver Control uses when
/// `KAKUREMICHI_DNS_RESOLVER` is not set.
pub fn system_resolver() -> Result<String, DnsError> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| unreachable("/etc/resolv.conf", e.to_string()))?;
    resolver_in(&text).ok_or_else(|| {
        unreachable(
            "/etc/resolv.conf",
            "no nameserver line; set KAKUREMICHI_DNS_RESOLVER to host:port",
        )
    })
}

fn resolver_in(resolv_conf: &str) -> Option<String> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
            .and_then(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
            .map(|ip| std::net::SocketAddr::new(ip, 53).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nameserver_of_resolv_conf() {
        let conf = "# generated\nsearch lan\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n";
        assert_eq!(resolver_in(conf).as_deref(), Some("192.0.2.53:53"));
        assert_eq!(
            resolver_in("nameserver fe80::1%eth0\n").as_deref(),
            Some("[fe80::1]:53")
        );
        assert_eq!(resolver_in("nameserver bogus\n"), None);
        assert_eq!(resolver_in(""), None);
    }
}
