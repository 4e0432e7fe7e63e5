//! The `projection.*` ops' answers: item lines framed around the projection module's own JSON form of an item
//! ([`ItemJson`], [`ProjectionItemOut`]), and the final lines' bodies.

use serde::{Deserialize, Serialize};

use super::envelope::RequestId;
pub use crate::projection::item::{
    ItemJson, ProjectionItemIn, ProjectionItemOut, ProjectionMetadataIn, ProjectionMetadataOut, TagsOut,
};
use crate::projection::ProjectionSummary;

/// Appends one projection item line `{"id":<id>,"item":{...}}\n` to `out`.
pub fn encode_projection_item(out: &mut Vec<u8>, id: &RequestId, item: &ProjectionItemOut<'_>) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"item\":");
    item.write_json(out);
    out.extend_from_slice(b"}\n");
}

/// An item line around an item the projection module made ([`ItemJson`], e.g. a cached one): a copy, the same bytes
/// as [`encode_projection_item`].
pub fn encode_projection_item_line(out: &mut Vec<u8>, id: &RequestId, item: &ItemJson) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"item\":");
    out.extend_from_slice(item.as_bytes());
    out.extend_from_slice(b"}\n");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionPutResponse {
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionPutManyResponse {
    pub versions: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionDeleteResponse {
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionListResponse {
    pub projections: Vec<ProjectionSummary>,
}

/// The answer to `projection.checkpoint`: `position` is `null` when the projection has no checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionCheckpointResponse {
    pub position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// The final line of a successful `projection.get_all` or `projection.query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionReadDone {
    pub count: u64,
}
