//! Egress pacing for a peer that drops our bursts.
//!
//! The stack sends a window's worth at once, in GSO batches: hundreds of datagrams within
//! microseconds. Our own peers take that (their sockets get 8 MiB of buffer), but a peer whose
//! socket has the kernel's default (208 KiB, about 75 datagrams: Debian's wireguard-go, say)
//! drops the tail of every burst, and smoltcp, without SACK, repairs such losses slowly: a
//! retransmission timeout whose estimate doubles after three in a row.
//!
//! A peer is paced only once it drops a share of what we send: retransmissions (TCP segments
//! that go out again, seen on the way out) of more than 5 % of the full-size segments sent
//! lately. A light loss, such as a busy receiver's, is left to TCP: pacing every loss cost our
//! own Agent 10-30 % of a four-stream transfer on a loaded machine. The first heavy loss caps the
//! datagrams a peer may be sent per millisecond; each further 10 ms with heavy loss halves the
//! cap, each without grows it by a quarter, until the peer is unpaced again. While a
//! millisecond's datagrams are spent the NIC refuses to transmit: the data waits in the
//! sockets' buffers. smoltcp then asks to be polled at once, and the peer's task sleeps until
//! that moment, which tokio's timer rounds up to its next millisecond tick: the next window
//! (hence the unit). The task does not spin (a loopback test bounds its polls).
//!
//! Time is the stack's clock, read once per pass and handed to the NIC: the pacer reads no
//! clock of its own on the data path.

use smoltcp::time::{Duration, Instant};

/// The unit of pacing.
const WINDOW: Duration = Duration::from_millis(1);
/// How often the cap adapts.
const PERIOD: Duration = Duration::from_millis(10);
/// Retransmissions per thousand full-size segments that make a loss heavy.
const HEAVY_PER_MILLE: u32 = 50;
/// Fewest retransmissions that make a loss heavy.
const HEAVY_MIN: u32 = 16;
/// The cap set by the first heavy loss: below a default 208 KiB socket buffer.
const FIRST_CAP: u32 = 48;
/// The least the cap falls to (about 90 Mbit/s).
const MIN_CAP: u32 = 8;
/// A cap this large is no pacing at all (about 11 Gbit/s).
const UNPACED_CAP: u32 = 1024;

/// Flows whose highest sequence sent is remembered (a slot per hash; collisions forget).
const FLOW_SLOTS: usize = 64;
/// Least data in a segment for it to count: bursts are of full-size segments, while a
/// keep-alive sends one byte again and a lone message is no burst.
const LOSS_SEGMENT: u32 = 512;

/// Whether pacing is on, from `KAKUREMICHI_PACING` (`auto`, the default, or `off`); read once
/// per process, and a value that is neither is said once and taken as `auto`.
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        let value = std::env::var("KAKUREMICHI_PACING").ok();
        parse_setting(value.as_deref()).unwrap_or_else(|bad| {
            tracing::warn!(
                "KAKUREMICHI_PACING={bad:?} is neither auto nor off: pacing stays on (auto)"
            );
            true
        })
    })
}

/// `KAKUREMICHI_PACING`'s value: whether pacing is on, or the value that is neither setting.
fn parse_setting(value: Option<&str>) -> Result<bool, &str> {
    match value.map(str::trim) {
        None | Some("") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("auto") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("off") => Ok(false),
        Some(v) => Err(v),
    }
}

pub(crate) struct Pacer {
    /// Datagrams per window while paced.
    cap: Option<u32>,
    window_start: Instant,
    sent_in_window: u32,
    period_start: Instant,
    /// Full-size segments sent and sent again, lately: halved at the end of each period, so
    /// that they weigh the last few.
    segments: u32,
    lost: u32,
    /// The cap was cut in this period (at most once per period).
    cut: bool,
    /// The cap stays as set by [`Pacer::pin`] (or off, see [`Pacer::disable`]), whatever the
    /// losses.
    pinned: bool,
    /// Per flow slot: (ports, end of the highest segment sent).
    flows: [(u32, u32); FLOW_SLOTS],
}

impl Default for Pacer {
    fn default() -> Self {
        let now = Instant::ZERO;
        Self {
            cap: None,
            window_start: now,
            sent_in_window: 0,
            period_start: now,
            segments: 0,
            lost: 0,
            cut: false,
            pinned: false,
            flows: [(u32::MAX, 0); FLOW_SLOTS],
        }
    }
}

impl Pacer {
    /// Whether one more datagram may leave at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        let Some(cap) = self.cap else { return true };
        if now >= self.window_start + WINDOW {
            self.window_start = now;
            self.sent_in_window = 0;
        }
        if self.sent_in_window < cap {
            self.sent_in_window += 1;
            return true;
        }
        false
    }

    /// Looks at an IPv4 packet on its way out at `now`: a TCP segment that carries data at or
    /// below what its flow already sent is a retransmission. True for a retransmission that
    /// counts: a full-size segment's.
    pub fn sent(&mut self, packet: &[u8], now: Instant) -> bool {
        let Some(segment) = tcp_segment(packet) else {
            return false;
        };
        let end = segment
            .seq
            .wrapping_add(segment.len)
            .wrapping_add(u32::from(segment.syn));
        let slot = &mut self.flows[(segment.ports.wrapping_mul(0x9E37_79B1) >> 26) as usize];
        // A connection opened (perhaps on the ports of an earlier one) starts its flow afresh.
        let again = if slot.0 != segment.ports || segment.syn {
            *slot = (segment.ports, end);
            false
        } else if (end.wrapping_sub(slot.1) as i32) > 0 {
            slot.1 = end;
            false
        } else {
            true
        };
        if segment.len < LOSS_SEGMENT {
            return false;
        }
        self.count(now, again);
        again
    }

    /// Never paces; retransmissions are still counted (`KAKUREMICHI_PACING=off`).
    pub fn disable(&mut self) {
        self.cap = None;
        self.pinned = true;
    }

    /// Paces at `cap` datagrams per millisecond from now on, whatever the losses.
    pub fn pin(&mut self, cap: u32) {
        self.cap = Some(cap);
        self.pinned = true;
    }

    /// Counts a full-size segment, sent `again` or not, and adapts the cap.
    fn count(&mut self, now: Instant, again: bool) {
        if now >= self.period_start + PERIOD {
            if !self.cut && !self.pinned {
                self.cap = self.cap.and_then(|cap| {
                    let grown = cap + (cap / 4).max(1);
                    (grown < UNPACED_CAP).then_some(grown)
                });
            }
            self.period_start = now;
            self.segments /= 2;
            self.lost /= 2;
            self.cut = false;
        }
        self.segments = self.segments.saturating_add(1);
        if !again {
            return;
        }
        self.lost = self.lost.saturating_add(1);
        if self.pinned {
            return;
        }
        let heavy = self.lost >= HEAVY_MIN
            && u64::from(self.lost) * 1000 >= u64::from(self.segments) * u64::from(HEAVY_PER_MILLE);
        if !heavy || self.cut {
            return;
        }
        self.cut = true;
        self.cap = Some(match self.cap {
            None => {
                self.window_start = now;
                self.sent_in_window = 0;
                FIRST_CAP
            }
            Some(cap) => (cap / 2).max(MIN_CAP),
        });
    }

    /// Datagrams per millisecond while paced.
    #[cfg(test)]
    pub fn cap(&self) -> Option<u32> {
        self.cap
    }
}

struct Segment {
    /// Source port in the high half, destination port in the low.
    ports: u32,
    seq: u32,
    /// Bytes of data.
    len: u32,
    syn: bool,
}

/// The TCP segment in an IPv4 packet; `None` for anything else, or a segment with neither data
/// nor SYN.
fn tcp_segment(packet: &[u8]) -> Option<Segment> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.get(9) != Some(&6) || ihl < 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let tcp = packet.get(ihl..total.min(packet.len()))?;
    let header = usize::from(tcp.get(12)? >> 4) * 4;
    let len = tcp.len().checked_sub(header)? as u32;
    let syn = tcp.get(13)? & 0x02 != 0;
    if len == 0 && !syn {
        return None;
    }
    Some(Segment {
        ports: u32::from_be_bytes(tcp.get(0..4)?.try_into().ok()?),
        seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
        len,
        syn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet of `data` bytes from port `sport` to 80 at sequence `seq`.
    fn segment(sport: u16, seq: u32, data: usize) -> Vec<u8> {
        let total = 20 + 20 + data;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 5 << 4;
        p
    }

    /// A pacer and the retransmissions it counted.
    #[derive(Default)]
    struct Counted {
        p: Pacer,
        retransmits: u64,
    }

    impl Counted {
        fn sent(&mut self, packet: &[u8], now: Instant) {
            self.retransmits += u64::from(self.p.sent(packet, now));
        }
    }

    #[test]
    fn heavy_loss_paces_and_light_loss_does_not() {
        let mut c = Counted::default();
        let t = Instant::from_millis(5);
        for i in 0..1000u32 {
            c.sent(
                &segment(
                    40000,
                    i.wrapping_mul(1400).wrapping_add(u32::MAX - 5000),
                    1400,
                ),
                t,
            );
            assert!(c.p.allows(t));
        }
        // ACKs, other flows' data and a keep-alive (the last byte sent, again) are not
        // retransmissions; neither is a connection opened anew on the same ports.
        c.sent(&segment(40000, 0, 0), t);
        c.sent(&segment(40001, 7, 1400), t);
        c.sent(&segment(40001, 1400 + 6, 1), t);
        let mut syn = segment(40001, 0, 0);
        syn[33] = 0x02;
        c.sent(&syn, t);
        c.sent(&segment(40001, 1, 1400), t);
        assert_eq!((c.retransmits, c.p.cap()), (0, None));
        // A few segments sent again out of a thousand: light, left to TCP.
        for _ in 0..HEAVY_MIN {
            c.sent(&segment(40000, u32::MAX - 5000, 1400), t);
        }
        assert_eq!((c.retransmits, c.p.cap()), (u64::from(HEAVY_MIN), None));
        // Over 5 %: paced.
        for _ in 0..60 {
            c.sent(&segment(40000, u32::MAX - 5000, 1400), t);
        }
        assert_eq!(c.p.cap(), Some(FIRST_CAP), "cut once per period");
        let allowed = (0..FIRST_CAP * 2).filter(|_| c.p.allows(t)).count();
        assert_eq!(allowed, FIRST_CAP as usize, "one window's datagrams");
        assert!(!c.p.allows(t + WINDOW / 2), "held back for a window");
        assert!(c.p.allows(t + WINDOW), "the next window's first datagram");
    }

    #[test]
    fn the_cap_halves_per_lossy_period_and_grows_back_to_unpaced() {
        let mut p = Pacer::default();
        let t0 = p.period_start;
        let lose = |p: &mut Pacer, at: Instant| {
            for _ in 0..HEAVY_MIN {
                p.count(at, true);
            }
        };
        lose(&mut p, t0);
        assert_eq!(p.cap(), Some(FIRST_CAP));
        lose(&mut p, t0 + PERIOD);
        assert_eq!(p.cap(), Some(FIRST_CAP / 2));
        for i in 2..10 {
            lose(&mut p, t0 + PERIOD * i);
        }
        assert_eq!(p.cap(), Some(MIN_CAP));
        // Periods without loss: back to no pacing.
        let mut periods = 10;
        while p.cap().is_some() {
            for _ in 0..100 {
                p.count(t0 + PERIOD * periods, false);
            }
            periods += 1;
            assert!(periods < 100, "{:?}", p.cap());
        }
        assert!(periods > 20, "{periods} periods");
    }

    #[test]
    fn a_disabled_pacer_counts_but_never_paces() {
        let mut p = Pacer::default();
        p.disable();
        for _ in 0..100 {
            p.count(Instant::ZERO, true);
        }
        assert_eq!(p.cap(), None);
        let mut p = Pacer::default();
        p.pin(4);
        for i in 0..100 {
            p.count(Instant::ZERO + PERIOD * i, i % 2 == 0);
        }
        assert_eq!(p.cap(), Some(4), "a pinned cap neither shrinks nor grows");
    }

    #[test]
    fn the_setting_is_auto_or_off_and_nothing_else() {
        assert_eq!(parse_setting(None), Ok(true));
        assert_eq!(parse_setting(Some("")), Ok(true));
        assert_eq!(parse_setting(Some("AUTO")), Ok(true));
        assert_eq!(parse_setting(Some(" off ")), Ok(false));
        assert_eq!(parse_setting(Some("of")), Err("of"));
    }

    #[test]
    fn malformed_packets_are_ignored() {
        let mut c = Counted::default();
        let t = Instant::ZERO;
        for packet in [
            &[][..],
            &[0x45][..],
            &[0x41, 0, 0, 40, 0, 0, 0, 0, 0, 6][..],
            &segment(1, 1, 10)[..30],
        ] {
            c.sent(packet, t);
        }
        let mut bad = segment(1, 1, 600);
        bad[2..4].copy_from_slice(&9999u16.to_be_bytes());
        c.sent(&bad, t);
        c.sent(&bad, t);
        assert_eq!(
            c.retransmits, 1,
            "a length past the packet counts what is there"
        );
        let mut bad = segment(1, 1, 10);
        bad[32] = 15 << 4; // a header longer than the segment
        c.sent(&bad, t);
        c.sent(&bad, t);
        assert_eq!(c.retransmits, 1);
    }
}
