//! CI smoke test of the benchmark suite: runs the real `opossum-bench --quick` against the real `opossumd` and
//! checks that it produced a JSON result with every workload and sane (positive, finite) numbers. It does not judge
//! the numbers.
//!
//! `opossumd` belongs to the root package, so cargo cannot hand this test its path: it is `$OPOSSUMD` when set, else
//! the `opossumd` beside `opossum-bench` in this profile's directory, which `cargo test --workspace` (what
//! scripts/test.sh runs) builds in the same invocation. `cargo test -p opossum-bench` alone may find an older one.

use std::path::PathBuf;
use std::process::Command;

const WORKLOADS: [&str; 11] = [
    "read_all_warm",
    "read_all_cold",
    "tag_query_student",
    "tag_query_course",
    "projection_get_all_warm",
    "projection_get_all_cold",
    "projection_rebuild",
    "append_conditional_1",
    "append_conditional_16",
    "append_conditional_64",
    "append_batched_100",
];

fn positive(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0)
}

fn opossumd() -> PathBuf {
    let path = std::env::var_os("OPOSSUMD").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_BIN_EXE_opossum-bench"))
            .with_file_name(format!("opossumd{}", std::env::consts::EXE_SUFFIX))
    });
    assert!(
        path.exists(),
        "{} not found: run `cargo test --workspace` (or `cargo build --bin opossumd` first), or set OPOSSUMD",
        path.display()
    );
    path
}

#[test]
#[cfg_attr(windows, ignore = "`opossum bench` is Unix-only (signals, syncfs, page-cache drops): not built on Windows")]
fn bench_quick_runs_and_writes_sane_json() {
    let out = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_opossum-bench"))
        .arg("--quick")
        .arg("--daemon")
        .arg(opossumd())
        .arg("--out")
        .arg(out.path())
        .arg("--dir")
        .arg(tmp.path())
        .output()
        .expect("run opossum-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "opossum-bench --quick failed: {}\n{stdout}\n{stderr}", output.status);

    let files: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one JSON file per run: {files:?}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).expect("valid JSON");

    assert_eq!(doc["params"]["mode"], "quick");
    assert!(doc["machine"]["cores"].as_u64().is_some_and(|c| c > 0), "machine info: {}", doc["machine"]);
    assert!(doc["cold_cache_method"].as_str().is_some_and(|m| !m.is_empty()));
    let events = doc["params"]["data_set"]["events"].as_u64().unwrap();
    assert_eq!(doc["seed"]["events"].as_u64(), Some(events));
    assert!(positive(&doc["seed"]["events_per_second"]));

    let workloads = doc["workloads"].as_array().expect("workloads");
    for name in WORKLOADS {
        let w = workloads
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("workload {name} missing from {}", files[0].display()));
        for field in ["value", "baseline", "ratio"] {
            assert!(positive(&w[field]), "{name}.{field} = {} (not a positive number)", w[field]);
        }
        assert!(["socket", "in-process"].contains(&w["via"].as_str().unwrap()), "{name}.via = {}", w["via"]);
        assert!(stdout.contains(w["title"].as_str().unwrap()), "the table lacks {name}:\n{stdout}");
        if let Some(latency) = w["latency"].as_object() {
            for q in ["p50_ms", "p99_ms", "p999_ms"] {
                assert!(positive(&latency[q]), "{name}.latency.{q} = {}", latency[q]);
            }
        }
    }
    for name in ["tag_query_student", "tag_query_course", "append_conditional_1", "append_batched_100"] {
        let w = workloads.iter().find(|w| w["name"] == name).unwrap();
        assert!(w["latency"].is_object(), "{name} has no latency percentiles");
    }
    let read_all = workloads.iter().find(|w| w["name"] == "read_all_warm").unwrap();
    assert_eq!(read_all["details"]["events"].as_u64(), Some(events), "read-all read every seeded event");
}
