//! Benchmark results: the JSON document written under `target/bench/` and the table printed at the end; [`peers`]
//! for the same-run comparison with another store.

pub mod peers;

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// One measured workload beside its raw-filesystem baseline from the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Stable identifier, e.g. `read_all_warm`, `append_conditional_16`.
    pub name: String,
    /// What the table shows in its first column.
    pub title: String,
    /// `socket` (through opossumd) or `in-process` (the library, when the daemon lacks the ops).
    pub via: String,
    /// Unit of `value` and `baseline`: `events/s`, `queries/s`, `s`, ...
    pub unit: String,
    pub value: f64,
    /// The raw-filesystem baseline, in `unit`.
    pub baseline: f64,
    pub baseline_method: String,
    /// Our speed over the baseline's speed (> 1: faster than the raw filesystem loop), whatever the unit.
    pub ratio: f64,
    pub latency: Option<Latency>,
    pub baseline_latency: Option<Latency>,
    /// The comparison figure the README quotes beside this workload.
    pub anchor: String,
    pub details: serde_json::Value,
}

impl Workload {
    /// A throughput workload (higher is better).
    pub fn rate(name: &str, title: String, unit: &str, value: f64, baseline: f64, baseline_method: &str) -> Workload {
        Workload {
            name: name.into(),
            title,
            via: "socket".into(),
            unit: unit.into(),
            value,
            baseline,
            baseline_method: baseline_method.into(),
            ratio: if baseline > 0.0 { value / baseline } else { 0.0 },
            latency: None,
            baseline_latency: None,
            anchor: String::new(),
            details: serde_json::Value::Null,
        }
    }

    /// A duration workload in seconds (lower is better); the ratio is still speed over baseline speed.
    pub fn seconds(name: &str, title: String, value: f64, baseline: f64, baseline_method: &str) -> Workload {
        let mut w = Workload::rate(name, title, "s", value, baseline, baseline_method);
        w.ratio = if value > 0.0 { baseline / value } else { 0.0 };
        w
    }

    pub fn anchor(mut self, anchor: &str) -> Workload {
        self.anchor = anchor.into();
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Workload {
        self.details = details;
        self
    }

    pub fn via(mut self, via: &str) -> Workload {
        self.via = via.into();
        self
    }

    pub fn latency(mut self, ours: Option<Latency>, baseline: Option<Latency>) -> Workload {
        self.latency = ours;
        self.baseline_latency = baseline;
        self
    }
}

/// Formats a number the way the table shows it: thousands separators, decimals only for small values.
pub fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        let int = v.round() as i64;
        let digits = int.abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if int < 0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The results as a Markdown table (printed, and pasted into the README).
pub fn table(workloads: &[Workload]) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | via | opossum | raw fs baseline (same run) | ratio | latency p50 / p99 / p999 | anchor |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---|---|\n");
    for w in workloads {
        let latency =
            w.latency.map(|l| format!("{:.2} / {:.2} / {:.2} ms", l.p50_ms, l.p99_ms, l.p999_ms)).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {} {} | {:.2}x | {} | {} |",
            w.title,
            w.via,
            num(w.value),
            w.unit,
            num(w.baseline),
            w.unit,
            w.ratio,
            latency,
            w.anchor
        );
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time in seconds (UTC).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(num(1_910_000.4), "1,910,000");
        assert_eq!(num(869.0), "869");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.5), "0.50");
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
