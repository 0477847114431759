//! The health task of one server: when to check, what a result means, and
//! what a change of health sets off.
//!
//! Timing: the first check runs within a quarter of `fast_interval` (spread
//! so servers don't align), then every `interval` give or take 10%, or every
//! `fast_interval` while the server is changing state. A failed dial on
//! client traffic counts as a failure at once and pulls the next check
//! forward, so a dead server under load is confirmed within about one
//! `fast_interval`. A disabled server is not checked; it goes back to
//! `unknown` and is checked at once when enabled.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Alive, Check, CheckError, FirstRoundGuard, RiseFall, Shared, Transition};
use super::{format_elapsed, jittered, random_below};
use crate::backend::pool::{AdminState, CheckRecord, Health, Server};
use crate::config;

/// Everything one server's task needs.
pub(super) struct ServerTask<C> {
    pub server: Arc<Server>,
    pub spec: config::Health,
    pub check: C,
    pub shared: Arc<Shared>,
    /// Notified by [`super::HealthChecks::check_now`].
    pub wake: Arc<Notify>,
    pub stop: CancellationToken,
    pub first_round: Option<FirstRoundGuard>,
    /// When the checker last warned that it cannot run (rate limit).
    pub setup_warned: Option<Instant>,
}

/// How often a checker that cannot run says so again.
const SETUP_WARNING_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Due,
    Asked,
    Passive,
}

impl<C: Check> ServerTask<C> {
    /// Checks the server until `stop` is cancelled.
    pub async fn run(mut self) {
        let mut machine = RiseFall::new(self.spec.rise, self.spec.fall, self.server.health());
        let first_spread = self.spec.fast_interval.min(self.spec.interval) / 4;
        let mut next = Instant::now() + random_below(first_spread);
        let mut last_started: Option<Instant> = None;
        let mut paused = false;
        // Passive evidence counts at most once between two active checks:
        // a burst of refused dials is one observation, not `fall` of them.
        let mut passive_counted = false;
        loop {
            self.server.health_task_beat();
            let woke = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = self.wake.notified() => Wake::Asked,
                () = self.server.dial_failure_reported() => Wake::Passive,
                () = tokio::time::sleep_until(next) => Wake::Due,
            };
            if self.server.admin() == AdminState::Disabled {
                if !paused {
                    paused = true;
                    self.pause(&mut machine);
                }
                // Enabling wakes the task through `check_now`; polling the
                // admin state each interval covers a caller that forgets.
                let _ = self.server.take_dial_failures();
                next = Instant::now() + self.spec.interval;
                continue;
            }
            if paused {
                paused = false;
                info!(backend = %self.server.backend, server = %self.server.name, "{} enabled: health checks resumed", self.server.name);
            } else if woke == Wake::Passive {
                if self.observe_passive(&mut machine, &mut passive_counted) {
                    let soon =
                        last_started.map_or_else(Instant::now, |t| t + self.spec.fast_interval);
                    next = next.min(soon);
                }
                if Instant::now() < next {
                    continue;
                }
            }

            let started = Instant::now();
            last_started = Some(started);
            let result = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                result = self.check.run() => result,
            };
            passive_counted = false;
            let judged = match result {
                Err(CheckError::Setup(why)) => {
                    self.checker_failed(why, started.elapsed());
                    false
                }
                result => {
                    self.checker_works_again();
                    self.judge(&mut machine, result, started.elapsed());
                    true
                }
            };
            self.first_round.take();
            // A checker that cannot run learns nothing by trying faster.
            let delay = if judged && machine.is_changing() {
                self.spec.fast_interval
            } else {
                self.spec.interval
            };
            next = (started + jittered(delay)).max(Instant::now());
        }
    }

    /// Weighs an active check's result.
    fn judge(
        &mut self,
        machine: &mut RiseFall,
        result: Result<Alive, CheckError>,
        elapsed: Duration,
    ) {
        self.server.stats.check_duration.observe(elapsed);
        let (label, detail, transition) = match result {
            Ok(Alive::Ok(detail)) => ("ok", detail, machine.pass()),
            Ok(Alive::AuthError(detail)) => ("auth_error", detail, machine.pass()),
            Err(e) => {
                debug!(backend = %self.server.backend, server = %self.server.name, result = e.result(), error = %e, "health check failed");
                (e.result(), e.detail(), machine.fail(e.result()))
            }
        };
        if label == "auth_error"
            && self
                .server
                .last_check()
                .is_none_or(|last| last.result != "auth_error")
        {
            warn!(
                backend = %self.server.backend,
                server = %self.server.name,
                result = "auth_error",
                "{}: the health check is not authorized ({detail}); the server counts as up because it answers, \
                 but its readiness is unknown: give [backend.health] a cert_file/key_file the apiserver accepts, \
                 or allow anonymous access to {}",
                self.server.name,
                self.spec.path
            );
        }
        self.server.count_check_result(label);
        let record = CheckRecord {
            result: label.to_owned(),
            check: self.check.kind(),
            elapsed,
            at: SystemTime::now(),
            detail,
        };
        self.server.record_check(record.clone());
        if let Some(transition) = transition {
            self.apply(transition, &record);
        }
    }

    /// The check could not run at all (its TLS files became unusable): the
    /// checker's problem, not the server's. The verdict stays as it was; the
    /// result is recorded and counted as `check_error` and warned about
    /// (once a minute at most).
    fn checker_failed(&mut self, why: String, elapsed: Duration) {
        let server = &self.server;
        server.count_check_result("check_error");
        server.record_check(CheckRecord {
            result: "check_error".to_owned(),
            check: self.check.kind(),
            elapsed,
            at: SystemTime::now(),
            detail: why.clone(),
        });
        let now = Instant::now();
        if self
            .setup_warned
            .is_none_or(|at| now.duration_since(at) >= SETUP_WARNING_EVERY)
        {
            self.setup_warned = Some(now);
            warn!(
                backend = %server.backend,
                server = %server.name,
                result = "check_error",
                health = server.health().as_str(),
                "{}: the {} health check cannot run ({why}); its health stays {} until it can, \
                 and client traffic still reports failed dials",
                server.name,
                self.check.kind(),
                server.health().as_str(),
            );
        }
    }

    /// A check ran after the checker could not: say so once.
    fn checker_works_again(&mut self) {
        if self.setup_warned.take().is_some() {
            info!(backend = %self.server.backend, server = %self.server.name, "{}: the {} health check runs again", self.server.name, self.check.kind());
        }
    }

    /// Counts failed dials reported by client traffic. Returns whether an
    /// active check should come soon to confirm them.
    fn observe_passive(&mut self, machine: &mut RiseFall, counted: &mut bool) -> bool {
        let Some((failures, kind)) = self.server.take_dial_failures() else {
            return false;
        };
        if !self.spec.passive || machine.health() == Health::Down {
            return false;
        }
        if *counted {
            return true;
        }
        let record = CheckRecord {
            result: kind.as_str().to_owned(),
            check: "passive",
            elapsed: Duration::ZERO,
            at: SystemTime::now(),
            detail: format!(
                "{failures} failed dial{} on client traffic",
                if failures == 1 { "" } else { "s" }
            ),
        };
        let would_fall = machine.would_fall();
        let counted_now = self.shared.passive_failure(&self.server, would_fall, || {
            self.server.record_check(record.clone());
            if let Some(transition) = machine.fail(kind.as_str()) {
                self.apply(transition, &record);
            }
        });
        if counted_now.is_none() {
            debug!(
                backend = %self.server.backend,
                server = %self.server.name,
                failures,
                result = kind.as_str(),
                "failed dials on client traffic, but this is the last server that can take connections: \
                 leaving the verdict to an active check"
            );
        } else {
            *counted = true;
        }
        true
    }

    /// Makes a change of health take effect: the atomic the data path
    /// reads, the log line, the counter, open connections, the frontends.
    fn apply(&self, transition: Transition, record: &CheckRecord) {
        let server = &self.server;
        server.set_health(transition.to);
        if transition.from != Health::Unknown {
            server.stats.transitions.fetch_add(1, Relaxed);
        }
        let text = transition.describe(
            &server.name,
            record.check,
            &record.result,
            &record.detail,
            record.elapsed,
        );
        info!(backend = %server.backend, server = %server.name, health = transition.to.as_str(), check = record.check, result = %record.result, "{text}");
        if transition.to == Health::Down
            && let Some(window) = self.spec.close_on_down
        {
            let open = server.active();
            server.signal_down();
            if open > 0 {
                info!(backend = %server.backend, server = %server.name, connections = open,
                    "{}: closing its {open} open connection(s) spread over {}", server.name, format_elapsed(window));
            }
        }
        self.shared.pool_changed(&server.backend);
    }

    /// Stops judging a disabled server: its health is unknown until enabled.
    fn pause(&mut self, machine: &mut RiseFall) {
        machine.reset(Health::Unknown);
        self.server.set_health(Health::Unknown);
        info!(backend = %self.server.backend, server = %self.server.name, "{} disabled: health checks paused", self.server.name);
        self.first_round.take();
        self.shared.pool_changed(&self.server.backend);
    }
}
