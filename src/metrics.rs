//! Metrics in the Prometheus text format: counters and histograms kept with atomics (or a std
//! Mutex for labelled families — nothing is awaited while it is held), rendered on scrape.
//! Names follow Prometheus conventions: `_total` counters, base units (`_seconds`, `_bytes`).
//!
//! Must not: block a request path for long, or use a label with unbounded values beyond route
//! patterns, refusal types and webhook ids.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// A histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in micro-units, to stay an integer.
    sum_micro: AtomicU64,
}

/// Latency buckets in seconds.
pub const SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Batch-size buckets.
pub const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micro.fetch_add((v * 1e6) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Appends `name_bucket`, `name_sum`, `name_count` lines with `labels` (e.g. `route="x"`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_micro.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {n}");
    }
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// What a leading cluster node reports in `/metrics`: its cluster task keeps them, the metrics
/// handler reads them through [`ApiMetrics::cluster`].
#[derive(Debug, Default)]
pub struct ClusterGauges {
    /// etcd's database size, as the first member that answers reports it (every 10 s).
    pub db_size: std::sync::atomic::AtomicU64,
    /// Batch records committed since the last snapshot.
    pub since_snapshot: Arc<std::sync::atomic::AtomicU64>,
    /// The last batch the latest snapshot holds.
    pub snapshot_lsn: std::sync::atomic::AtomicU64,
}

/// Request and join metrics recorded by the API. Labels are `'static` (route patterns from the
/// route table, refusal types), so recording allocates nothing.
#[derive(Default)]
pub struct ApiMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    joins: Mutex<BTreeMap<&'static str, u64>>,
    /// Set when this process leads in cluster mode.
    cluster: std::sync::OnceLock<Arc<ClusterGauges>>,
    /// Set when a Janus media server is kept in step.
    janus: std::sync::OnceLock<Arc<crate::janus::JanusStats>>,
    /// When the served TLS certificate expires (unix seconds; 0: none, or no TLS).
    pub certificate_not_after: Arc<std::sync::atomic::AtomicI64>,
}

impl ApiMetrics {
    /// From now on `/metrics` reports the cluster's gauges too (a node that leads).
    pub fn set_cluster(&self, gauges: Arc<ClusterGauges>) {
        let _ = self.cluster.set(gauges);
    }

    /// From now on `/metrics` reports the Janus reconciler's counters.
    pub fn set_janus(&self, stats: Arc<crate::janus::JanusStats>) {
        let _ = self.janus.set(stats);
    }

    pub fn janus(&self) -> Option<&crate::janus::JanusStats> {
        self.janus.get().map(Arc::as_ref)
    }

    pub fn cluster(&self) -> Option<&ClusterGauges> {
        self.cluster.get().map(Arc::as_ref)
    }

    pub fn request(&self, route: &'static str, status: u16, secs: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_insert(0) += 1;
        }
        if let Ok(mut m) = self.durations.lock() {
            m.entry(route).or_insert_with(|| Histogram::new(SECONDS)).observe(secs);
        }
    }

    /// A join's outcome: `admitted` or the refusal's error type.
    pub fn join(&self, outcome: &'static str) {
        if let Ok(mut m) = self.joins.lock() {
            *m.entry(outcome).or_insert(0) += 1;
        }
    }

    pub fn render(&self, out: &mut String) {
        header(out, "gatehouse_http_requests_total", "counter", "HTTP requests by route pattern and status.");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "gatehouse_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    label(route)
                );
            }
        }
        header(out, "gatehouse_http_request_duration_seconds", "histogram", "Time to answer, by route pattern.");
        if let Ok(m) = self.durations.lock() {
            for (route, h) in m.iter() {
                h.render(out, "gatehouse_http_request_duration_seconds", &format!("route=\"{}\"", label(route)));
            }
        }
        header(
            out,
            "gatehouse_joins_total",
            "counter",
            "Join attempts by outcome (admitted, or the refusal's error type).",
        );
        if let Ok(m) = self.joins.lock() {
            for (outcome, n) in m.iter() {
                let _ = writeln!(out, "gatehouse_joins_total{{outcome=\"{}\"}} {n}", label(outcome));
            }
        }
    }
}

/// Appends a family's HELP and TYPE lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The allocator's own view of memory: what the program holds (`allocated`) against what the
/// allocator keeps in physical pages (`resident`: the live heap plus its caches and
/// fragmentation). RSS minus `resident` is what is not heap (stacks, code, sled's buffers come
/// from the heap too). jemalloc builds only: the other allocators leave both out.
pub fn render_heap(out: &mut String) {
    #[cfg(not(any(feature = "system-allocator", feature = "mimalloc-allocator")))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        // The counters are cached per epoch: advancing it refreshes them.
        if epoch::advance().is_err() {
            return;
        }
        if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
            single(
                out,
                "gatehouse_heap_allocated_bytes",
                "gauge",
                "Heap bytes in use (jemalloc's stats.allocated).",
                allocated as f64,
            );
            single(
                out,
                "gatehouse_heap_resident_bytes",
                "gauge",
                "Bytes the allocator holds in physical pages: the heap in use, its caches and fragmentation (jemalloc's stats.resident).",
                resident as f64,
            );
        }
    }
    #[cfg(any(feature = "system-allocator", feature = "mimalloc-allocator"))]
    let _ = out;
}

/// Appends one unlabelled gauge or counter with its HELP and TYPE lines.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_text() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.render(&mut s, "x_seconds", "a=\"b\"");
        assert!(s.contains("x_seconds_bucket{a=\"b\",le=\"0.1\"} 1"));
        assert!(s.contains("x_seconds_bucket{a=\"b\",le=\"1\"} 2"));
        assert!(s.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 3"));
        assert!(s.contains("x_seconds_count{a=\"b\"} 3"));
        assert_eq!(label("a\"b"), "a\\\"b");
    }
}
