//! The op table: every op the server knows, by name, and the family module that runs it ([`core`] for hello,
//! head, stats, append, read and tracking.get; [`projection`] for `projection.*`). `unknown_op` answers list the table's names.
//! To add an op: a variant of [`Op`], its row in [`OPS`], its arm in [`dispatch`], its handler in a family module.

use std::sync::Arc;

use super::connection::{OpError, Request, Responder};
use super::Context;
use crate::wire::{ErrorCode, ProtocolError};

pub(super) mod core;
pub(super) mod projection;

/// Every op of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Hello,
    Head,
    Stats,
    Append,
    Read,
    /// Served by the connection itself (`server::subscribe`): the connection becomes its stream.
    Subscribe,
    ProjectionPut,
    ProjectionPutMany,
    ProjectionGet,
    ProjectionDelete,
    ProjectionGetAll,
    ProjectionQuery,
    ProjectionList,
    ProjectionCheckpoint,
    TrackingGet,
}

/// The op table: wire name → op.
pub(super) const OPS: [(&str, Op); 15] = [
    ("hello", Op::Hello),
    ("head", Op::Head),
    ("stats", Op::Stats),
    ("append", Op::Append),
    ("read", Op::Read),
    ("subscribe", Op::Subscribe),
    ("projection.put", Op::ProjectionPut),
    ("projection.put_many", Op::ProjectionPutMany),
    ("projection.get", Op::ProjectionGet),
    ("projection.delete", Op::ProjectionDelete),
    ("projection.get_all", Op::ProjectionGetAll),
    ("projection.query", Op::ProjectionQuery),
    ("projection.list", Op::ProjectionList),
    ("projection.checkpoint", Op::ProjectionCheckpoint),
    ("tracking.get", Op::TrackingGet),
];

/// The op named `name`.
pub(super) fn lookup(name: &str) -> Option<Op> {
    OPS.iter().find(|(n, _)| *n == name).map(|(_, op)| *op)
}

/// Routes a request to its op's handler.
pub(super) async fn dispatch(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    let Some(op) = lookup(&req.op) else {
        let known: Vec<&str> = OPS.iter().map(|(name, _)| *name).collect();
        let op = crate::wire::quote_input(&req.op, crate::limits::INPUT_QUOTE_BYTES_MAX);
        let message = format!("unknown op {op:?}; this server knows {}", known.join(", "));
        return Err(ProtocolError::new(ErrorCode::UnknownOp, message).into());
    };
    match op {
        Op::Hello => core::hello(ctx, req, resp),
        Op::Head => core::head(ctx, req, resp),
        Op::Stats => core::stats(ctx, req, resp),
        Op::Append => core::append(ctx, req, resp).await,
        Op::Read => core::read(ctx, req, resp).await,
        Op::TrackingGet => core::tracking_get(ctx, req, resp),
        Op::Subscribe => {
            Err(ProtocolError::new(ErrorCode::InvalidRequest, "subscribe takes over its connection").into())
        }
        _ => projection::dispatch(ctx, op, req, resp).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_op_once() {
        for (i, (name, op)) in OPS.iter().enumerate() {
            assert_eq!(lookup(name), Some(*op));
            assert!(OPS[i + 1..].iter().all(|(n, o)| n != name && o != op), "{name} twice");
        }
        assert_eq!(lookup("frobnicate"), None);
    }
}
