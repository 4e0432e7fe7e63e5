//! opossum: a DCB event store kept as plain files in the on-disk layout of the .NET library Opossum,
//! read and written in bulk through io_uring (or a portable thread pool) behind the [`io::BatchIo`] trait.
//!
//! See ARCHITECTURE.md for the code map and the invariants.

pub mod client;
pub mod config;
pub mod format;
pub mod io;
pub mod journal;
pub mod limits;
pub mod model;
pub mod projection;
pub mod server;
pub mod wire;

/// The wire module's former name, kept for code outside this crate written against it; new code uses [`wire`].
pub use wire as protocol;
pub mod store;
