//! opossum: a DCB event store kept as plain files in the on-disk layout of the .NET library Opossum,
//! read and written in bulk through io_uring (or a portable thread pool) behind the [`io::BatchIo`] trait.
//!
//! The layers, in data-path order (a module only uses the ones after it): [`server`] (the socket) → [`wire`]
//! (JSON Lines v1) → [`store`] and [`projection`] (the facade, the commit path, the index, reads) → [`journal`]
//! (the segment log) and [`format`] (Opossum's tree: names and JSON) → [`io`] (`BatchIo`, the commit protocol,
//! barriers) → the kernel. [`model`] (DCB types) and [`limits`] (every bound) are used by all; [`client`] and
//! [`config`] serve the binaries. See ARCHITECTURE.md for the code map and the invariants.

pub mod client;
pub mod config;
pub mod format;
pub mod io;
pub mod journal;
pub mod limits;
pub mod model;
pub mod projection;
pub mod server;
pub mod store;
pub mod wire;
