//! The rise/fall state machine of one server, and the words for its changes.
//!
//! A server starts `unknown` and its first result decides. After that it
//! takes `fall` consecutive failures to go down and `rise` consecutive
//! successes to come back up; one result of the other kind resets the
//! streak. Active checks and passive observations feed the same machine.

use std::time::Duration;

use crate::backend::pool::Health;

/// The rise/fall counters of one server.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    health: Health,
    successes: u32,
    failures: u32,
    /// The result all failures of the current streak share; `None` if mixed.
    failure_result: Option<&'static str>,
}

/// A change of health, with the streak that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The health before.
    pub from: Health,
    /// The health after.
    pub to: Health,
    /// How many consecutive results of the deciding kind were seen.
    pub streak: u32,
    /// For a fall: the result every failure of the streak had, if the same.
    pub failure_result: Option<&'static str>,
}

impl RiseFall {
    /// A machine continuing from `health` (`unknown` for a new server; a
    /// server kept across a reload keeps what it had).
    pub fn new(rise: u32, fall: u32, health: Health) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            health,
            successes: 0,
            failures: 0,
            failure_result: None,
        }
    }

    /// The health the machine has decided.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Forgets every streak and starts over from `health`.
    pub fn reset(&mut self, health: Health) {
        *self = RiseFall::new(self.rise, self.fall, health);
    }

    /// Whether the server is between states, so checks should come faster:
    /// not decided yet, or a streak toward the other state has begun.
    pub fn is_changing(&self) -> bool {
        match self.health {
            Health::Unknown => true,
            Health::Up => self.failures > 0,
            Health::Down => self.successes > 0,
        }
    }

    /// Whether one more failure would take the server down.
    pub fn would_fall(&self) -> bool {
        match self.health {
            Health::Unknown => true,
            Health::Up => self.failures + 1 >= self.fall,
            Health::Down => false,
        }
    }

    /// Records a passed check.
    pub fn pass(&mut self) -> Option<Transition> {
        self.failures = 0;
        self.failure_result = None;
        match self.health {
            Health::Up => None,
            Health::Unknown => Some(self.change(Health::Up, 1, None)),
            Health::Down => {
                self.successes += 1;
                (self.successes >= self.rise).then(|| self.change(Health::Up, self.successes, None))
            }
        }
    }

    /// Records a failed check whose result label is `result`.
    pub fn fail(&mut self, result: &'static str) -> Option<Transition> {
        self.successes = 0;
        match self.health {
            Health::Down => None,
            Health::Unknown => Some(self.change(Health::Down, 1, Some(result))),
            Health::Up => {
                self.failure_result = match (self.failures, self.failure_result) {
                    (0, _) => Some(result),
                    (_, Some(same)) if same == result => Some(same),
                    _ => None,
                };
                self.failures += 1;
                (self.failures >= self.fall)
                    .then(|| self.change(Health::Down, self.failures, self.failure_result))
            }
        }
    }

    fn change(
        &mut self,
        to: Health,
        streak: u32,
        failure_result: Option<&'static str>,
    ) -> Transition {
        let from = self.health;
        self.reset(to);
        Transition {
            from,
            to,
            streak,
            failure_result,
        }
    }
}

impl Transition {
    /// The log line's words: `cp2 down: 3 consecutive timeouts (1.0s)`.
    /// `check` is the kind of the deciding check, `result`/`detail`/`elapsed`
    /// describe it.
    pub fn describe(
        &self,
        server: &str,
        check: &str,
        result: &str,
        detail: &str,
        elapsed: Duration,
    ) -> String {
        let to = self.to.as_str();
        let why = match (self.from, self.to) {
            (Health::Unknown, Health::Up) => {
                format!("first {check} check passed ({})", format_elapsed(elapsed))
            }
            (Health::Unknown, _) => format!("first {check} check failed: {result} ({detail})"),
            (_, Health::Up) => format!(
                "{} consecutive successful checks ({check}, {})",
                self.streak,
                format_elapsed(elapsed)
            ),
            _ => match self.failure_result {
                Some("timeout") if !elapsed.is_zero() => format!(
                    "{} consecutive timeouts ({})",
                    self.streak,
                    format_elapsed(elapsed)
                ),
                Some(same) => format!("{} consecutive {} ({detail})", self.streak, plural_of(same)),
                None => format!(
                    "{} consecutive failed checks, the last {result} ({detail})",
                    self.streak
                ),
            },
        };
        format!("{server} {to}: {why}")
    }
}

/// The plural noun for a run of failures with this result label.
fn plural_of(result: &str) -> String {
    match result {
        "refused" => "refused connections".into(),
        "timeout" => "timeouts".into(),
        "unreachable" => "unreachable errors".into(),
        "reset" => "connection resets".into(),
        "dns_error" => "DNS errors".into(),
        "tls_error" => "TLS errors".into(),
        "http_error" => "HTTP errors".into(),
        "other" => "dial errors".into(),
        other => format!("{other} results"),
    }
}

/// A duration as people read it in a log: `1.0s`, `12.3ms`, `250µs`.
pub fn format_elapsed(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1}s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}µs", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_result_decides() {
        let mut m = RiseFall::new(2, 3, Health::Unknown);
        assert!(m.is_changing());
        let t = m.pass().unwrap();
        assert_eq!((t.from, t.to, t.streak), (Health::Unknown, Health::Up, 1));
        let mut m = RiseFall::new(2, 3, Health::Unknown);
        let t = m.fail("refused").unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Down));
        assert!(!m.is_changing());
    }

    #[test]
    fn fall_consecutive_failures_take_it_down_and_a_success_resets_them() {
        let mut m = RiseFall::new(2, 3, Health::Up);
        assert_eq!(m.fail("timeout"), None);
        assert!(m.is_changing());
        assert_eq!(m.fail("timeout"), None);
        assert!(m.would_fall());
        assert_eq!(m.pass(), None);
        assert!(!m.is_changing() && !m.would_fall());
        assert_eq!(m.fail("timeout"), None);
        assert_eq!(m.fail("timeout"), None);
        let t = m.fail("timeout").unwrap();
        assert_eq!(
            t,
            Transition {
                from: Health::Up,
                to: Health::Down,
                streak: 3,
                failure_result: Some("timeout")
            }
        );
        assert_eq!(m.health(), Health::Down);
    }

    #[test]
    fn rise_consecutive_successes_bring_it_back() {
        let mut m = RiseFall::new(2, 3, Health::Down);
        assert_eq!(m.pass(), None);
        assert!(m.is_changing());
        assert_eq!(m.fail("refused"), None);
        assert_eq!(m.pass(), None);
        let t = m.pass().unwrap();
        assert_eq!((t.from, t.to, t.streak), (Health::Down, Health::Up, 2));
        assert!(!m.is_changing());
    }

    #[test]
    fn mixed_failures_are_described_by_the_last() {
        let mut m = RiseFall::new(1, 2, Health::Up);
        m.fail("refused");
        let t = m.fail("timeout").unwrap();
        assert_eq!(t.failure_result, None);
        let text = t.describe("cp2", "tcp", "timeout", "no answer", Duration::from_secs(1));
        assert_eq!(
            text,
            "cp2 down: 2 consecutive failed checks, the last timeout (no answer)"
        );
    }

    #[test]
    fn descriptions_read_like_the_issue() {
        let down = Transition {
            from: Health::Up,
            to: Health::Down,
            streak: 3,
            failure_result: Some("timeout"),
        };
        assert_eq!(
            down.describe("cp2", "tcp", "timeout", "x", Duration::from_millis(1000)),
            "cp2 down: 3 consecutive timeouts (1.0s)"
        );
        let refused = Transition {
            failure_result: Some("refused"),
            ..down
        };
        assert_eq!(
            refused.describe(
                "cp2",
                "tcp",
                "refused",
                "Connection refused",
                Duration::ZERO
            ),
            "cp2 down: 3 consecutive refused connections (Connection refused)"
        );
        let up = Transition {
            from: Health::Down,
            to: Health::Up,
            streak: 2,
            failure_result: None,
        };
        assert_eq!(
            up.describe("cp1", "https", "ok", "200 OK", Duration::from_micros(2500)),
            "cp1 up: 2 consecutive successful checks (https, 2.5ms)"
        );
    }

    #[test]
    fn rise_and_fall_of_one_act_at_once() {
        let mut m = RiseFall::new(1, 1, Health::Up);
        assert!(m.would_fall());
        assert!(m.fail("reset").is_some());
        assert!(m.pass().is_some());
    }
}
