//! Allocation of WireGuard addresses (per node, unique across Agents and Gateways) and tunnel
//! ports (per Agent). Both pick the lowest free value, inside the caller's write transaction.

use super::Tx;
use super::{StoreError, StoreResult};
use crate::validate::WgNetwork;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

/// Ports handed out to tunnels on an Agent's userspace stack.
pub const PORT_RANGE: RangeInclusive<u16> = 10000..=65535;

/// Lowest host address of `net` (network and broadcast excluded) not in `used`.
pub fn lowest_free_address(net: &WgNetwork, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (first, last) = net.host_range();
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
}

/// Lowest port of [`PORT_RANGE`] not in `used`.
pub fn lowest_free_port(used: &HashSet<u16>) -> Option<u16> {
    PORT_RANGE.into_iter().find(|p| !used.contains(p))
}

/// Allocates a WireGuard address for a new Agent or Gateway.
pub(super) async fn allocate_address(tx: &mut Tx, net: &WgNetwork) -> StoreResult<String> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT wg_address FROM agents UNION SELECT wg_address FROM gateways")
            .fetch_all(&mut **tx)
            .await?;
    let used: HashSet<Ipv4Addr> = rows.iter().filter_map(|(a,)| a.parse().ok()).collect();
    lowest_free_address(net, &used).map(|a| a.to_string()).ok_or_else(|| {
        StoreError::Conflict(format!(
            "no free WireGuard address left in {net}; delete unused agents or gateways, or configure a larger wg_network"
        ))
    })
}

/// Allocates a tunnel port on `agent_id`.
pub(super) async fn allocate_port(tx: &mut Tx, agent_id: i64) -> StoreResult<i64> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT port FROM tunnels WHERE agent_id = $1 \
         UNION SELECT port FROM tunnel_replicas WHERE agent_id = $1",
    )
    .bind(agent_id)
    .fetch_all(&mut **tx)
    .await?;
    let used: HashSet<u16> = rows
        .iter()
        .filter_map(|(p,)| u16::try_from(*p).ok())
        .collect();
    lowest_free_port(&used).map(i64::from).ok_or_else(|| {
        StoreError::Conflict(format!(
            "agent {agent_id} has no free tunnel port left; move some tunnels to another agent"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_start_after_network_and_fill_gaps() {
        let net = WgNetwork::parse("10.77.0.0/16").unwrap();
        let mut used = HashSet::new();
        assert_eq!(lowest_free_address(&net, &used), Some(ip("10.77.0.1")));
        used.extend([ip("10.77.0.1"), ip("10.77.0.2"), ip("10.77.0.4")]);
        assert_eq!(lowest_free_address(&net, &used), Some(ip("10.77.0.3")));
        // Addresses outside the network (e.g. from an older wg_network) do not matter.
        used.insert(ip("192.168.0.3"));
        used.insert(ip("10.77.0.3"));
        assert_eq!(lowest_free_address(&net, &used), Some(ip("10.77.0.5")));
    }

    #[test]
    fn addresses_skip_broadcast_and_run_out() {
        let net = WgNetwork::parse("10.0.0.0/30").unwrap();
        let mut used = HashSet::from([ip("10.0.0.1")]);
        assert_eq!(lowest_free_address(&net, &used), Some(ip("10.0.0.2")));
        used.insert(ip("10.0.0.2"));
        assert_eq!(
            lowest_free_address(&net, &used),
            None,
            "10.0.0.3 is the broadcast address"
        );
    }

    #[test]
    fn ports_fill_gaps_and_run_out() {
        let mut used = HashSet::new();
        assert_eq!(lowest_free_port(&used), Some(10000));
        used.extend([10000, 10001, 10003]);
        assert_eq!(lowest_free_port(&used), Some(10002));
        let all: HashSet<u16> = PORT_RANGE.collect();
        assert_eq!(lowest_free_port(&all), None);
        let mut almost = all.clone();
        almost.remove(&65535);
        assert_eq!(lowest_free_port(&almost), Some(65535));
    }
}
