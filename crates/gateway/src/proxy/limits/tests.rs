use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn limits(allow: &[&str], deny: &[&str]) -> RouteLimits {
    RouteLimits {
        ip_allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
        ip_deny: deny.iter().map(|n| n.parse().unwrap()).collect(),
        ..RouteLimits::default()
    }
}

fn route(tunnel_id: i64, limits: RouteLimits) -> GatewayRoute {
    GatewayRoute {
        tunnel_id,
        agent_id: 1,
        agent_address: Ipv4Addr::new(10, 77, 0, 2),
        port: 10000,
        https_redirect: false,
        hsts_max_age: 0,
        replicas: Vec::new(),
        access: Default::default(),
        limits,
        plain_http_only: false,
        tcp_access: false,
        basic_auth: None,
        log_requests: false,
        error_page: None,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn deny_wins_and_an_empty_allow_list_admits_everyone() {
    let refused = Arc::new(Refused::default());
    let open = TunnelLimiter::new(
        &limits(&[], &["192.0.2.0/24", "2001:db8::/32"]),
        refused.clone(),
    );
    assert!(open.admit(ip("198.51.100.1")).is_ok());
    assert!(open.admit(ip("2001:db9::1")).is_ok());
    let page = open.admit(ip("192.0.2.77")).unwrap_err();
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    // Seen through a dual-stack socket, an IPv4 client is still that IPv4 address.
    assert!(open.admit(ip("::ffff:192.0.2.77")).is_err());
    assert!(open.admit(ip("2001:db8:1::5")).is_err());
    assert_eq!(refused.ip_denied.load(Ordering::Relaxed), 3);

    let listed = TunnelLimiter::new(
        &limits(&["10.0.0.0/8", "2001:db8::1/128"], &["10.0.0.9/32"]),
        Arc::default(),
    );
    assert!(listed.admit(ip("10.200.0.1")).is_ok());
    assert!(listed.admit(ip("2001:db8::1")).is_ok());
    for refused in ["10.0.0.9", "11.0.0.1", "2001:db8::2", "::1"] {
        assert!(listed.admit(ip(refused)).is_err(), "{refused}");
    }
}

#[test]
fn buckets_allow_the_burst_then_refuse_with_retry_after() {
    let rate = RateLimit {
        per_second: 2,
        burst: 3,
    };
    let buckets = Buckets::new(rate);
    let a = ClientKey::of(ip("192.0.2.1"));
    for _ in 0..3 {
        assert!(buckets.take(a).is_ok());
    }
    let wait = buckets.take(a).unwrap_err();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    // Another client has its own bucket; a neighbour in the same IPv6 /64 shares one.
    assert!(buckets.take(ClientKey::of(ip("192.0.2.2"))).is_ok());
    let v6 = ClientKey::of(ip("2001:db8:0:1::1"));
    assert_eq!(v6, ClientKey::of(ip("2001:db8:0:1:ffff::2")));
    assert_ne!(v6, ClientKey::of(ip("2001:db8:0:2::1")));

    let refused = Arc::new(Refused::default());
    let limited = TunnelLimiter::new(
        &RouteLimits {
            rate: Some(RateLimit {
                per_second: 1,
                burst: 1,
            }),
            ..RouteLimits::default()
        },
        refused.clone(),
    );
    assert!(limited.admit(ip("192.0.2.1")).is_ok());
    let page = limited.admit(ip("192.0.2.1")).unwrap_err();
    assert_eq!(page.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(page.headers()[RETRY_AFTER], "1");
    assert_eq!(refused.rate_limited.load(Ordering::Relaxed), 1);
}

#[test]
fn retry_after_is_whole_seconds_rounded_up() {
    let secs = |d| {
        too_many(d).headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(secs(Duration::from_millis(1)), "1");
    assert_eq!(secs(Duration::ZERO), "1");
    assert_eq!(secs(Duration::from_millis(2001)), "3");
    assert_eq!(secs(Duration::from_secs(2)), "2");
}

#[test]
fn tracked_clients_are_bounded() {
    // A slow rate: every bucket stays "active" (not refilled) for the whole test, the worst case.
    let buckets = Buckets::new(RateLimit {
        per_second: 1,
        burst: 1,
    });
    for i in 0..(MAX_CLIENTS as u32 * 4) {
        let _ = buckets.take(ClientKey::V4(i));
        let _ = buckets.take(ClientKey::V6(u64::from(i) << 8));
    }
    let (tracked, capacity) = buckets.tracked();
    assert!(tracked <= MAX_CLIENTS, "{tracked}");
    assert!(tracked > MAX_CLIENTS / 2, "{tracked}");
    // Every shard's table stays within 2,048 slots (1,792 usable), whatever the churn.
    assert!(capacity <= 1792, "{capacity}");
    // Refilled buckets are dropped first, and lose nothing.
    let mut shard = Shard {
        clients: HashMap::from([(ClientKey::V4(1), 5), (ClientKey::V4(2), 50)]),
        swept_at: 0,
    };
    shard.make_room(10);
    assert_eq!(
        shard.clients.into_keys().collect::<Vec<_>>(),
        [ClientKey::V4(2)]
    );
}

#[test]
fn concurrency_permits_are_capped_and_given_back() {
    let refused = Arc::new(Refused::default());
    let limiter = TunnelLimiter::new(
        &RouteLimits {
            max_concurrent_requests: Some(2),
            ..RouteLimits::default()
        },
        refused.clone(),
    );
    let first = limiter.acquire().unwrap();
    let second = limiter.acquire().unwrap();
    assert!(first.is_some() && second.is_some());
    let page = limiter.acquire().unwrap_err();
    assert_eq!(page.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(page.headers()[RETRY_AFTER], "1");
    let body = Counted::new(Full::new(Bytes::new()), first);
    drop(body);
    assert!(limiter.acquire().unwrap().is_some());
    assert_eq!(refused.concurrency.load(Ordering::Relaxed), 1);
    let none = TunnelLimiter::new(&limits(&[], &["192.0.2.0/24"]), Arc::default());
    assert!(none.acquire().unwrap().is_none());
}

#[test]
fn updates_keep_unchanged_limiters_and_counters() {
    let table = Limits::default();
    let rate = RouteLimits {
        rate: Some(RateLimit {
            per_second: 1,
            burst: 1,
        }),
        ..RouteLimits::default()
    };
    table.update(&[route(1, rate.clone()), route(2, RouteLimits::default())]);
    assert!(table.get(2).is_none(), "no limits, no limiter");
    let client = Ipv6Addr::LOCALHOST.into();
    assert!(table.get(1).unwrap().admit(client).is_ok());
    assert!(table.get(1).unwrap().admit(client).is_err());

    // Same limits: the same limiter, so the client's bucket is still empty.
    table.update(&[route(1, rate.clone())]);
    assert!(table.get(1).unwrap().admit(client).is_err());
    assert_eq!(table.refused()[&1].rate_limited.load(Ordering::Relaxed), 2);

    // Changed limits: fresh buckets, counters kept.
    let mut faster = rate;
    faster.rate = Some(RateLimit {
        per_second: 100,
        burst: 100,
    });
    table.update(&[route(1, faster)]);
    assert!(table.get(1).unwrap().admit(client).is_ok());
    assert_eq!(table.refused()[&1].rate_limited.load(Ordering::Relaxed), 2);

    table.update(&[]);
    assert!(table.get(1).is_none() && table.refused().is_empty());
}
