//! The commit modes: which copy of an event is durable before the acknowledgement (design §3.1). Each mode is one
//! file with its numbered protocol; `store/writer.rs` holds the one `match` on [`CommitMode`](super::CommitMode).

pub(crate) mod journal;
mod tree_checks;
