//! The opossum benchmark suite and its shared harness, written once for every benchmark of the project: the
//! `opossum-bench` binary ([`suite`]), the wire and in-process examples, `benches/store_bench.rs`, and the peer
//! benchmark against UmaDB (`crates/opossum-peer-bench`, outside the workspace, which takes this crate by path).
//!
//! - [`daemon`]: start a real `opossumd` on a store and wait for its `READY=1`; stop and restart it.
//! - [`sys`]: the machine side: page-cache eviction ([`sys::Evict`]), machine description, the raw-filesystem
//!   baselines (sequential read, the layout's commit floor).
//! - [`data`]: deterministic data generators (the course-management data set, [`data::student_short_info`]).
//! - [`load`]: the one closed-loop client runner every throughput workload uses.
//! - [`workloads`]: the suite's workloads, measured over the socket beside their baselines.
//! - [`report`]: results as JSON and Markdown tables; [`report::peers`] for the same-run peer comparison.

pub mod daemon;
pub mod data;
pub mod load;
pub mod report;
pub mod suite;
pub mod sys;
pub mod workloads;
