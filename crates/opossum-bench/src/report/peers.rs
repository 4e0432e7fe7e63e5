//! The same-run comparison of opossumd with a peer store (the peer benchmark, `crates/opossum-peer-bench`): every
//! workload measured on every system in alternating rounds, shown as one row per workload with each system's
//! median over the rounds and its ratio to the peer, and written as one JSON document with every round's number.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{num, Latency};

/// Which way a unit is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One system's measurement of one workload in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub system: String,
    pub round: usize,
    pub value: f64,
    pub latency: Option<Latency>,
    /// Counts behind the value (requests, events, rejected appends, seconds), for the record.
    pub details: serde_json::Value,
    /// Measured on a slow disk: the disk check before this file-creating phase found file creates slower than
    /// its quiet threshold and gave up waiting ([`DiskCheck`]). Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slow_disk: bool,
}

/// One disk check of the peer driver: before a file-creating phase (fill, conditional, batched) it times file
/// creation (small files created with O_CREAT|O_EXCL in a fresh directory of the bench directory, then removed) and
/// waits until that is quiet, for at most a set time. On ext4 without a journal, creates cost ~700 µs instead of
/// ~25-40 µs for minutes after a mass deletion, which made earlier runs 2-10x slower.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskCheck {
    pub system: String,
    pub round: usize,
    /// The phase it ran before: `fill`, `conditional` or `batched`.
    pub before: String,
    /// µs per file of the last probe, the one the phase started after.
    pub us_per_file: f64,
    /// Every probe's µs per file, in order (more than one when it waited).
    pub probes_us_per_file: Vec<f64>,
    /// The threshold: at or under it the disk is quiet.
    pub quiet_us_per_file: f64,
    /// Seconds from the first probe to the end of the last.
    pub waited_seconds: f64,
    /// False: still slow when the wait ran out; the phase was measured on a slow disk (its measurements say
    /// `slow_disk`).
    pub quiet: bool,
}

/// One workload (at one client count) across systems and rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Stable identifier, e.g. `append_conditional_16`.
    pub name: String,
    pub title: String,
    pub clients: usize,
    pub unit: String,
    pub better: Better,
    pub measurements: Vec<Measurement>,
}

impl Row {
    pub fn new(name: &str, title: &str, clients: usize, unit: &str, better: Better) -> Row {
        Row { name: name.into(), title: title.into(), clients, unit: unit.into(), better, measurements: Vec::new() }
    }

    /// Whether any of `system`'s measurements in this row was taken on a slow disk.
    pub fn slow_disk(&self, system: &str) -> bool {
        self.of(system).any(|m| m.slow_disk)
    }

    fn of<'a>(&'a self, system: &'a str) -> impl Iterator<Item = &'a Measurement> + 'a {
        self.measurements.iter().filter(move |m| m.system == system)
    }

    /// The median of `system`'s values over the rounds (the upper median of an even count).
    pub fn median(&self, system: &str) -> Option<f64> {
        let mut v: Vec<f64> = self.of(system).map(|m| m.value).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    /// The median of `system`'s p50 and p99 over the rounds, in ms.
    pub fn latency_median(&self, system: &str) -> Option<(f64, f64)> {
        let mut p50: Vec<f64> = self.of(system).filter_map(|m| m.latency.map(|l| l.p50_ms)).collect();
        let mut p99: Vec<f64> = self.of(system).filter_map(|m| m.latency.map(|l| l.p99_ms)).collect();
        if p50.is_empty() {
            return None;
        }
        p50.sort_by(f64::total_cmp);
        p99.sort_by(f64::total_cmp);
        Some((p50[p50.len() / 2], p99[p99.len() / 2]))
    }

    /// The median of `system`'s CPU per event over the rounds, in µs: (the server process's, the whole machine's),
    /// from the `cpu` its measurements' details carry (`server_us_per_event`, `machine_us_per_event`).
    pub fn cpu_median(&self, system: &str) -> Option<(f64, f64)> {
        let per_event = |key: &str| {
            let mut v: Vec<f64> = self.of(system).filter_map(|m| m.details["cpu"][key].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        Some((per_event("server_us_per_event")?, per_event("machine_us_per_event")?))
    }

    /// `system`'s median over `peer`'s, as "how many times the peer's": for a lower-is-better unit (bytes, MiB of
    /// RSS) it is inverted, so that > 1 always means `system` did better.
    pub fn ratio(&self, system: &str, peer: &str) -> Option<f64> {
        let (ours, theirs) = (self.median(system)?, self.median(peer)?);
        let r = match self.better {
            Better::Higher => ours / theirs,
            Better::Lower => theirs / ours,
        };
        r.is_finite().then_some(r)
    }
}

/// The JSON document of a peer run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerDocument {
    pub tool: String,
    pub started_at: String,
    pub duration_seconds: f64,
    pub mode: String,
    pub rounds: usize,
    pub machine: serde_json::Value,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages at the start, between rounds and at the end.
    pub load_average: Vec<[f64; 3]>,
    /// Every system: its name, binary, version or commit, and the arguments it ran with.
    pub systems: Vec<serde_json::Value>,
    /// The system every ratio is against.
    pub peer: String,
    pub params: serde_json::Value,
    pub rows: Vec<Row>,
    /// Every disk check, in run order (none in documents from before the checks).
    #[serde(default)]
    pub disk_checks: Vec<DiskCheck>,
}

impl PeerDocument {
    /// The systems other than the peer, in the order of `systems`.
    fn ours(&self) -> Vec<String> {
        self.systems.iter().filter_map(|s| s["name"].as_str()).filter(|s| *s != self.peer).map(String::from).collect()
    }

    /// The Markdown table: per row, the peer's median, then each of our systems' median and its ratio; latency
    /// medians (p50 / p99) where the workload has them.
    pub fn table(&self) -> String {
        let ours = self.ours();
        let mut out = String::new();
        let _ = write!(out, "| workload | clients | {} |", self.peer);
        for s in &ours {
            let _ = write!(out, " {s} | {s} / {} |", self.peer);
        }
        let _ = write!(out, " p50 / p99 ms: {}", self.peer);
        for s in &ours {
            let _ = write!(out, "; {s}");
        }
        out.push_str(" |\n|---|---:|---:|");
        for _ in &ours {
            out.push_str("---:|---:|");
        }
        out.push_str("---|\n");
        for row in &self.rows {
            let cell = |system: &str| {
                let slow = if row.slow_disk(system) { " (slow disk)" } else { "" };
                row.median(system).map_or("–".to_string(), |v| format!("{} {}{slow}", num(v), row.unit))
            };
            let clients = if row.clients == 0 { String::new() } else { row.clients.to_string() };
            let _ = write!(out, "| {} | {clients} | {} |", row.title, cell(&self.peer));
            for s in &ours {
                let ratio = row.ratio(s, &self.peer).map_or("–".to_string(), |r| format!("{r:.2}x"));
                let _ = write!(out, " {} | {ratio} |", cell(s));
            }
            let latency = |system: &str| {
                row.latency_median(system).map_or("–".to_string(), |(p50, p99)| format!("{p50:.2} / {p99:.2}"))
            };
            let mut lat = latency(&self.peer);
            for s in &ours {
                lat.push_str("; ");
                lat.push_str(&latency(s));
            }
            if row.latency_median(&self.peer).is_none() && ours.iter().all(|s| row.latency_median(s).is_none()) {
                lat.clear();
            }
            let _ = writeln!(out, " {lat} |");
        }
        out
    }

    /// The CPU each system spent per event in the rows that measured it (the append phases), medians over the
    /// rounds: the server process's and the whole machine's (the benchmark's own clients and the kernel's threads,
    /// writeback and interrupts, included), in µs. On a machine the clients share, where the CPUs are saturated,
    /// these say which system's work per event sets its rate. Empty when no row measured CPU.
    pub fn cpu_table(&self) -> String {
        let mut systems = vec![self.peer.clone()];
        systems.extend(self.ours());
        let rows: Vec<&Row> = self.rows.iter().filter(|r| systems.iter().any(|s| r.cpu_median(s).is_some())).collect();
        let mut out = String::new();
        if rows.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "CPU per event, µs (medians; server process / whole machine, the clients and the kernel's writeback \
             included):"
        );
        out.push('\n');
        let _ = write!(out, "| workload | clients |");
        for s in &systems {
            let _ = write!(out, " {s} |");
        }
        out.push_str("\n|---|---:|");
        for _ in &systems {
            out.push_str("---:|");
        }
        out.push('\n');
        for row in rows {
            let _ = write!(out, "| {} | {} |", row.title, row.clients);
            for s in &systems {
                let cell = row
                    .cpu_median(s)
                    .map_or("–".to_string(), |(server, machine)| format!("{server:.0} / {machine:.0}"));
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }

    /// The table's notes on the disk: a summary of every disk check (count, µs per file, seconds waited), then a
    /// line for each check that had to wait or found the disk still slow. Empty without checks.
    pub fn disk_notes(&self) -> String {
        let mut out = String::new();
        let Some(first) = self.disk_checks.first() else {
            return out;
        };
        let us = |v: f64| format!("{v:.0}");
        let (lo, hi) = self
            .disk_checks
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), c| (lo.min(c.us_per_file), hi.max(c.us_per_file)));
        let slow = self.disk_checks.iter().filter(|c| !c.quiet).count();
        let waited: f64 = self.disk_checks.iter().map(|c| c.waited_seconds).sum();
        let _ = writeln!(
            out,
            "Disk: {} check(s) before file-creating phases (quiet: ≤ {} µs per file created): {} µs/file at the \
             phases' start, {:.0} s waited in all, {}.",
            self.disk_checks.len(),
            us(first.quiet_us_per_file),
            if lo == hi { us(lo) } else { format!("{}–{}", us(lo), us(hi)) },
            waited,
            if slow == 0 {
                "every phase started on a quiet disk".to_string()
            } else {
                format!("{slow} phase(s) MEASURED ON A SLOW DISK, marked (slow disk)")
            }
        );
        for c in self.disk_checks.iter().filter(|c| !c.quiet || c.probes_us_per_file.len() > 1) {
            let probes = c.probes_us_per_file.iter().map(|&v| us(v)).collect::<Vec<_>>().join(" → ");
            let _ = writeln!(
                out,
                "- round {}, {}, before {}: {probes} µs/file over {:.0} s: {}",
                c.round,
                c.system,
                c.before,
                c.waited_seconds,
                if c.quiet { "quiet" } else { "still slow, SLOW DISK" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(system: &str, round: usize, value: f64, p99: Option<f64>) -> Measurement {
        Measurement {
            system: system.into(),
            round,
            value,
            latency: p99.map(|p99_ms| Latency {
                p50_ms: p99_ms / 2.0,
                p99_ms,
                p999_ms: p99_ms,
                max_ms: p99_ms,
                samples: 9,
            }),
            details: serde_json::Value::Null,
            slow_disk: false,
        }
    }

    fn doc() -> PeerDocument {
        let mut append =
            Row::new("append_conditional_16", "durable conditional append", 16, "events/s", Better::Higher);
        append.measurements = vec![
            m("opossum", 1, 1_000.0, Some(4.0)),
            m("umadb", 1, 4_000.0, Some(2.0)),
            m("opossum", 2, 3_000.0, Some(6.0)),
            m("umadb", 2, 2_000.0, Some(1.0)),
            m("opossum", 3, 2_000.0, Some(5.0)),
            m("umadb", 3, 3_000.0, Some(3.0)),
        ];
        let mut disk = Row::new("disk_bytes_per_million", "bytes on disk per 1M events", 0, "B", Better::Lower);
        disk.measurements = vec![m("opossum", 1, 4e9, None), m("umadb", 1, 1e9, None)];
        let mut missing = Row::new("read_all_cold", "read-all, cold", 4, "events/s", Better::Higher);
        missing.measurements = vec![m("umadb", 1, 5.0, None)];
        PeerDocument {
            tool: "test".into(),
            started_at: "2026-11-29T12:00:00Z".into(),
            duration_seconds: 1.0,
            mode: "quick".into(),
            rounds: 3,
            machine: serde_json::json!({"cores": 2}),
            load_average: vec![[1.0, 2.0, 3.0]],
            systems: vec![serde_json::json!({"name": "opossum"}), serde_json::json!({"name": "umadb"})],
            peer: "umadb".into(),
            params: serde_json::Value::Null,
            rows: vec![append, disk, missing],
            disk_checks: Vec::new(),
        }
    }

    #[test]
    fn the_cpu_table_shows_each_systems_median_cpu_per_event_where_measured() {
        let mut d = doc();
        assert_eq!(d.cpu_table(), "", "no row measured CPU");
        let cpu = |server: f64, machine: f64| {
            let per_event = serde_json::json!({"server_us_per_event": server, "machine_us_per_event": machine});
            serde_json::json!({ "cpu": per_event })
        };
        let append = &mut d.rows[0];
        for (m, (server, machine)) in append.measurements.iter_mut().zip([
            (70.0, 95.0),  // opossum, round 1
            (40.0, 60.0),  // umadb
            (90.0, 120.0), // opossum, round 2
            (50.0, 70.0),  // umadb
            (80.0, 100.0), // opossum, round 3
            (45.0, 65.0),  // umadb
        ]) {
            m.details = cpu(server, machine);
        }
        assert_eq!(d.rows[0].cpu_median("opossum"), Some((80.0, 100.0)));
        assert_eq!(d.rows[0].cpu_median("umadb"), Some((45.0, 65.0)));
        assert_eq!(d.rows[1].cpu_median("opossum"), None);
        let table = d.cpu_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[2], "| workload | clients | umadb | opossum |", "the peer first, as in the main table");
        assert_eq!(lines[4], "| durable conditional append | 16 | 45 / 65 | 80 / 100 |");
        assert_eq!(lines.len(), 5, "only the row that measured CPU: {table}");
    }

    #[test]
    fn medians_and_ratios_say_who_did_better() {
        let d = doc();
        let append = &d.rows[0];
        assert_eq!(append.median("opossum"), Some(2_000.0));
        assert_eq!(append.median("umadb"), Some(3_000.0));
        assert_eq!(append.ratio("opossum", "umadb"), Some(2_000.0 / 3_000.0));
        assert_eq!(append.latency_median("opossum"), Some((2.5, 5.0)));
        // Lower is better: four times the bytes is a quarter as good.
        assert_eq!(d.rows[1].ratio("opossum", "umadb"), Some(0.25));
        assert_eq!(d.rows[2].ratio("opossum", "umadb"), None);
        assert_eq!(d.rows[2].median("opossum"), None);
    }

    #[test]
    fn the_table_shows_both_numbers_and_the_ratio() {
        let table = doc().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 3, "{table}");
        assert!(lines[0].contains("| umadb |") && lines[0].contains("opossum / umadb"), "{table}");
        assert!(lines[2].contains("3,000 events/s") && lines[2].contains("2,000 events/s"), "{table}");
        assert!(lines[2].contains("0.67x") && lines[2].contains("1.00 / 2.00; 2.50 / 5.00"), "{table}");
        assert!(lines[3].contains("0.25x"), "{table}");
        assert!(lines[4].contains("| – | – |"), "a missing measurement is a dash, not a number: {table}");
    }

    fn check(system: &str, before: &str, probes: &[f64], waited_seconds: f64, quiet: bool) -> DiskCheck {
        DiskCheck {
            system: system.into(),
            round: 1,
            before: before.into(),
            us_per_file: *probes.last().unwrap(),
            probes_us_per_file: probes.to_vec(),
            quiet_us_per_file: 150.0,
            waited_seconds,
            quiet,
        }
    }

    #[test]
    fn the_notes_show_the_disk_and_the_table_marks_a_slow_disk() {
        let mut d = doc();
        assert_eq!(d.disk_notes(), "", "no checks, no notes");
        d.disk_checks = vec![check("umadb", "conditional", &[30.0], 0.0, true)];
        assert!(
            d.disk_notes().contains("1 check(s)") && d.disk_notes().contains("every phase started on a quiet disk")
        );
        assert_eq!(d.disk_notes().lines().count(), 1, "{}", d.disk_notes());
        d.disk_checks.push(check("opossum", "conditional", &[700.0, 400.0, 35.0], 60.0, true));
        d.disk_checks.push(check("opossum", "batched", &[700.0, 650.0], 30.0, false));
        d.rows[0].measurements[0].slow_disk = true;
        let notes = d.disk_notes();
        assert_eq!(notes.lines().count(), 3, "{notes}");
        assert!(notes.contains("30–650 µs/file") && notes.contains("90 s waited"), "{notes}");
        assert!(notes.contains("1 phase(s) MEASURED ON A SLOW DISK"), "{notes}");
        assert!(notes.contains("before conditional: 700 → 400 → 35 µs/file over 60 s: quiet"), "{notes}");
        assert!(notes.contains("before batched: 700 → 650 µs/file over 30 s: still slow, SLOW DISK"), "{notes}");
        let table = d.table();
        let append = table.lines().nth(2).unwrap();
        assert!(append.contains("2,000 events/s (slow disk)"), "{table}");
        assert!(!append.contains("3,000 events/s (slow disk)"), "the peer's cell is not marked: {table}");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["disk_checks"][2]["quiet"], false);
        assert_eq!(json["rows"][0]["measurements"][0]["slow_disk"], true);
        assert!(json["rows"][0]["measurements"][1].get("slow_disk").is_none(), "only a slow disk is written");
    }

    #[test]
    fn the_json_keeps_every_round() {
        let d = doc();
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["rows"][0]["measurements"].as_array().unwrap().len(), 6);
        assert_eq!(json["rows"][1]["better"], "lower");
        assert_eq!(json["load_average"][0][2], 3.0);
        let back: PeerDocument = serde_json::from_value(json).unwrap();
        assert_eq!(back.rows[0].median("umadb"), Some(3_000.0));
    }
}
