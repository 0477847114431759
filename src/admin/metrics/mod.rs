//! Prometheus metrics (DESIGN.md §3.4), read from the current snapshot at
//! scrape time by one custom collector: the connection path only bumps its
//! own atomics and never touches a prometheus type, and a server removed by
//! a reload vanishes from the next scrape.

mod process;

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::UNIX_EPOCH;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::backend::connections::CloseReason;
use crate::backend::pool::{CHECK_RESULTS, Health};
use crate::daemon::Daemon;
use crate::net::dial::DialErrorKind;
use crate::proxy::frontend::RejectReason;
use crate::util::histogram::Histogram;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry holding lbd's collector for `daemon`.
pub fn registry(daemon: Daemon) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { daemon }));
    registry
}

/// Encodes every metric as OpenMetrics text, `# EOF` included.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Reads the daemon's current snapshot on every scrape.
#[derive(Debug)]
struct SnapshotCollector {
    daemon: Daemon,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.daemon.snapshot();
        let frontends = &snapshot.frontends;
        let servers: Vec<_> = snapshot
            .pools
            .iter()
            .flat_map(|p| p.servers.iter())
            .collect();
        let fl = |name: &str| [("frontend", name.to_owned())];
        let sl = |s: &crate::backend::pool::Server| {
            [("backend", s.backend.clone()), ("server", s.name.clone())]
        };

        counter(
            &mut out,
            "lbd_frontend_connections",
            "Connections accepted by a frontend.",
            frontends
                .iter()
                .map(|f| (fl(&f.name), f.stats.total.load(Relaxed))),
        )?;
        gauge(
            &mut out,
            "lbd_frontend_active_connections",
            "Connections open on a frontend right now.",
            frontends
                .iter()
                .map(|f| (fl(&f.name), f.stats.active.load(Relaxed) as i64)),
        )?;
        counter(
            &mut out,
            "lbd_frontend_rejected",
            "Client connections turned away, by reason: no_server (none eligible), dial_failed (every dial failed), source_limit, inspect_timeout (no ClientHello in time), proxy_header (no valid PROXY header).",
            frontends.iter().flat_map(|f| {
                RejectReason::ALL
                    .iter()
                    .enumerate()
                    .map(move |(i, reason)| {
                        (
                            [
                                ("frontend", f.name.clone()),
                                ("reason", reason.as_str().to_owned()),
                            ],
                            f.stats.rejected[i].load(Relaxed),
                        )
                    })
            }),
        )?;
        let routes: Vec<_> = frontends
            .iter()
            .flat_map(|f| {
                let route = f.route.load_full();
                let Some(sni) = &route.sni else {
                    return Vec::new();
                };
                let label = |name: &str, backend: &str| {
                    [
                        ("frontend", f.name.clone()),
                        ("route", name.to_owned()),
                        ("backend", backend.to_owned()),
                    ]
                };
                let mut counts: Vec<_> = sni
                    .routes
                    .iter()
                    .map(|r| {
                        (
                            label(&r.sni, &r.pool.spec.name),
                            r.connections.load(Relaxed),
                        )
                    })
                    .collect();
                counts.push((
                    label("default", &route.pool.spec.name),
                    sni.default_connections.load(Relaxed),
                ));
                counts
            })
            .collect();
        counter(
            &mut out,
            "lbd_frontend_route_connections",
            "Connections of a frontend with `routes` by the route their ClientHello's server name took (route=default: no route matched, no SNI, or not TLS).",
            routes,
        )?;
        counter(
            &mut out,
            "lbd_frontend_bytes",
            "Bytes relayed by a frontend: direction=in from clients, out to clients.",
            frontends.iter().flat_map(|f| {
                [
                    (
                        [("frontend", f.name.clone()), ("direction", "in".to_owned())],
                        f.stats.bytes_in.load(Relaxed),
                    ),
                    (
                        [
                            ("frontend", f.name.clone()),
                            ("direction", "out".to_owned()),
                        ],
                        f.stats.bytes_out.load(Relaxed),
                    ),
                ]
            }),
        )?;

        gauge(
            &mut out,
            "lbd_server_up",
            "1 when the server passes its health checks, else 0: down OR not checked yet (lbd_server_health tells them apart).",
            servers
                .iter()
                .map(|s| (sl(s), i64::from(s.health() == Health::Up))),
        )?;
        gauge(
            &mut out,
            "lbd_server_health",
            "1 for the server's current health state (unknown: not checked yet or disabled, up, down), 0 for the others.",
            servers.iter().flat_map(|s| {
                let now = s.health();
                Health::ALL.iter().map(move |&state| {
                    (
                        [
                            ("backend", s.backend.clone()),
                            ("server", s.name.clone()),
                            ("state", state.as_str().to_owned()),
                        ],
                        i64::from(now == state),
                    )
                })
            }),
        )?;
        counter(
            &mut out,
            "lbd_server_transitions",
            "Health changes (up to down or back) of a server.",
            servers
                .iter()
                .map(|s| (sl(s), s.stats.transitions.load(Relaxed))),
        )?;
        counter(
            &mut out,
            "lbd_health_checks",
            "Active health checks of a server, by result (ok, auth_error, a dial error kind, tls_error, http_error, or check_error: the checker could not run, the server was not judged).",
            servers.iter().flat_map(|s| {
                CHECK_RESULTS.iter().enumerate().map(move |(i, result)| {
                    (
                        [
                            ("backend", s.backend.clone()),
                            ("server", s.name.clone()),
                            ("result", (*result).to_owned()),
                        ],
                        s.stats.check_results[i].load(Relaxed),
                    )
                })
            }),
        )?;
        counter(
            &mut out,
            "lbd_server_connections",
            "Connections established to a server.",
            servers.iter().map(|s| (sl(s), s.stats.total.load(Relaxed))),
        )?;
        gauge(
            &mut out,
            "lbd_server_active_connections",
            "Connections open to a server right now.",
            servers.iter().map(|s| (sl(s), s.active() as i64)),
        )?;
        counter(
            &mut out,
            "lbd_server_connect_errors",
            "Failed dials to a server, by kind (refused, timeout, unreachable, reset, dns_error, other).",
            servers.iter().flat_map(|s| {
                DialErrorKind::ALL.iter().map(move |kind| {
                    (
                        [
                            ("backend", s.backend.clone()),
                            ("server", s.name.clone()),
                            ("kind", kind.as_str().to_owned()),
                        ],
                        s.stats.connect_errors[kind.index()].load(Relaxed),
                    )
                })
            }),
        )?;
        counter(
            &mut out,
            "lbd_server_bytes",
            "Bytes relayed with a server: direction=to_server or to_client.",
            servers.iter().flat_map(|s| {
                [
                    (
                        [
                            ("backend", s.backend.clone()),
                            ("server", s.name.clone()),
                            ("direction", "to_server".to_owned()),
                        ],
                        s.stats.bytes_to_server.load(Relaxed),
                    ),
                    (
                        [
                            ("backend", s.backend.clone()),
                            ("server", s.name.clone()),
                            ("direction", "to_client".to_owned()),
                        ],
                        s.stats.bytes_to_client.load(Relaxed),
                    ),
                ]
            }),
        )?;
        counter(
            &mut out,
            "lbd_server_closed",
            "Connections lbd closed itself, by reason: down (close_on_down), rebalance, drain_deadline (shutdown), idle (idle_timeout or fin_timeout).",
            servers.iter().flat_map(|s| {
                CloseReason::ALL.iter().map(move |reason| {
                    (
                        [
                            ("backend", s.backend.clone()),
                            ("server", s.name.clone()),
                            ("reason", reason.as_str().to_owned()),
                        ],
                        s.stats.closed[reason.index()].load(Relaxed),
                    )
                })
            }),
        )?;
        histogram(
            &mut out,
            "lbd_connect_duration",
            "Time successful dials to a server took.",
            servers.iter().map(|s| (sl(s), &s.stats.connect_duration)),
        )?;
        histogram(
            &mut out,
            "lbd_health_check_duration",
            "Time health checks of a server took.",
            servers.iter().map(|s| (sl(s), &s.stats.check_duration)),
        )?;

        let (applied, refused) = self.daemon.reload_counts();
        counter(
            &mut out,
            "lbd_config_reloads",
            "Config reloads since start, by result: ok or error.",
            [
                ([("result", "ok")], applied),
                ([("result", "error")], refused),
            ],
        )?;
        let discovery: Vec<(String, crate::daemon::DiscoveryState)> = snapshot
            .pools
            .iter()
            .filter_map(|p| {
                let name = &p.spec.name;
                self.daemon
                    .discovery_status(name)
                    .map(|s| (name.clone(), s))
            })
            .collect();
        counter(
            &mut out,
            "lbd_discovery_updates",
            "Lists and failures discovery got from the cluster, by result: applied (the servers changed), unchanged, empty (ignored) or error.",
            discovery.iter().flat_map(|(backend, state)| {
                crate::daemon::DISCOVERY_RESULTS.iter().map(move |result| {
                    (
                        [("backend", backend.as_str()), ("result", *result)],
                        state.updates.get(result).copied().unwrap_or(0),
                    )
                })
            }),
        )?;
        single_gauge(
            &mut out,
            "lbd_config_last_reload_successful",
            "1 when the latest config reload was applied, 0 when it was refused.",
            None,
            i64::from(self.daemon.last_reload().ok),
        )?;

        let started = self
            .daemon
            .started_at()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        single_gauge(
            &mut out,
            "process_start_time",
            "Start time of the process since the Unix epoch, in seconds.",
            Some(&Unit::Seconds),
            started.as_secs_f64(),
        )?;
        process::encode(&mut out)
    }
}

fn counter<L: EncodeLabelSet>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = out.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<L: EncodeLabelSet, N: prometheus_client::encoding::EncodeGaugeValue>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, N)>,
) -> fmt::Result {
    let mut family = out.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of histograms in seconds; `name` gets the `_seconds` suffix.
fn histogram<'h, L: EncodeLabelSet>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, &'h Histogram)>,
) -> fmt::Result {
    let mut family =
        out.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, histogram) in series {
        let (sum, count, cumulative) = histogram.snapshot();
        // The encoder wants per-bucket counts, +Inf included.
        let mut buckets = Vec::with_capacity(cumulative.len() + 1);
        let mut below = 0;
        for (bound, total) in cumulative {
            buckets.push((bound, total - below));
            below = total;
        }
        buckets.push((f64::INFINITY, count - below));
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// A metric with no labels and one float counter value.
fn single_counter(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> fmt::Result {
    let family = out.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
}

/// A metric with no labels and one gauge value.
fn single_gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> fmt::Result {
    let family = out.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}
