//! How many messages go out: at most `max` per window, the rest held back and counted, and one
//! message for them once the window is over. A storm (a site's network gone: a thousand Agents
//! offline at once, or one after the other over a minute) sends a few messages and a count, not
//! a thousand mails. Pure: time comes in.

use std::time::{Duration, Instant};

use super::channels::Event;

#[derive(Debug)]
pub struct Budget {
    window: Duration,
    max: usize,
    /// When the current window began (at its first message).
    started: Option<Instant>,
    sent: usize,
    /// Held back in this window: fired, resolved.
    held: [usize; 2],
}

impl Budget {
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max: max.max(1),
            started: None,
            sent: 0,
            held: [0, 0],
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Once the window is over: what was held back (to send one message each), and a new
    /// window that counts those messages.
    pub fn roll(&mut self, now: Instant) -> Vec<(Event, usize)> {
        let over = self
            .started
            .is_some_and(|s| now.duration_since(s) >= self.window);
        if !over {
            return Vec::new();
        }
        let held: Vec<(Event, usize)> = [Event::Fired, Event::Resolved]
            .into_iter()
            .zip(self.held)
            .filter(|(_, n)| *n > 0)
            .collect();
        self.held = [0, 0];
        self.sent = held.len();
        self.started = (!held.is_empty()).then_some(now);
        held
    }

    /// Whether one more message may go now; if not, it is counted as held back.
    pub fn admit(&mut self, now: Instant, event: Event) -> bool {
        self.started.get_or_insert(now);
        if self.sent < self.max {
            self.sent += 1;
            true
        } else {
            self.held[usize::from(event != Event::Fired)] += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_budget_messages_are_counted_and_summed_up_once_the_window_is_over() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut b = Budget::new(Duration::from_secs(60), 3);
        assert!(b.roll(at(0)).is_empty());
        let admitted: Vec<bool> = (0..5).map(|i| b.admit(at(i), Event::Fired)).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        assert!(!b.admit(at(10), Event::Resolved));
        assert!(b.roll(at(59_999)).is_empty(), "the window is not over");
        assert_eq!(
            b.roll(at(60_000)),
            [(Event::Fired, 2), (Event::Resolved, 1)]
        );
        // The two summaries count in the new window: one more message fits.
        assert!(b.admit(at(60_001), Event::Fired));
        assert!(!b.admit(at(60_002), Event::Fired));
        assert_eq!(b.roll(at(120_000)), [(Event::Fired, 1)]);
        // A quiet window: nothing held, nothing to say, the next message opens a new one.
        assert!(b.roll(at(180_000)).is_empty());
        assert!(b.roll(at(500_000)).is_empty());
        assert!(b.admit(at(500_001), Event::Fired));
    }
}
