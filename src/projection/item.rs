//! A projection's JSON form as clients see it (the `"item"` of `projection.get_all` lines and the body of
//! `projection.get`), owned here so the cache can keep it without the wire module: [`ItemJson`] is that object's
//! bytes, made from a projection file and decoded back; the wire module only frames it into lines.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::format::ProjectionView;
use super::{ProjectionError, ProjectionItem, ProjectionMetadata};
use crate::model::{RawJson, Tag};

/// The JSON object of one projection as clients see it (`{"key","state","metadata","tags"?}`), as bytes: what the
/// projection cache keeps, so that streaming a cached projection is a copy between a line's prefix and suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemJson(Box<[u8]>);

impl ItemJson {
    /// The item of the projection file `bytes` read for `key` (from `path`, for errors).
    pub fn from_file(key: &str, path: &std::path::Path, bytes: &[u8]) -> Result<ItemJson, ProjectionError> {
        let view = super::reader::decode_view(key, path, bytes)?;
        let mut json = Vec::with_capacity(bytes.len() + 64);
        ProjectionItemOut::from_view(key, &view, bytes.len()).write_json(&mut json);
        Ok(ItemJson(json.into_boxed_slice()))
    }

    /// The item of a projection read back.
    pub fn from_item(item: &ProjectionItem) -> ItemJson {
        let mut json = Vec::new();
        ProjectionItemOut::from(item).write_json(&mut json);
        ItemJson(json.into_boxed_slice())
    }

    /// Decodes the item back.
    pub fn decode(&self) -> Result<ProjectionItem, ProjectionError> {
        serde_json::from_slice::<ProjectionItemIn>(&self.0)
            .map(ProjectionItem::from)
            .map_err(|e| ProjectionError::Invalid(format!("a cached projection does not decode (a bug): {e}")))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Any bytes, for tests of the cache's bookkeeping.
    #[cfg(test)]
    pub(crate) fn from_test_bytes(bytes: Vec<u8>) -> ItemJson {
        ItemJson(bytes.into_boxed_slice())
    }
}

impl ProjectionItemOut<'_> {
    /// Appends this item's JSON object to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("projections serialise");
    }
}

impl<'a> ProjectionItemOut<'a> {
    /// A projection file parsed in place (`decode_view`), for `key`, whose file is `file_len` bytes long.
    pub fn from_view(key: &'a str, view: &'a ProjectionView<'a>, file_len: usize) -> ProjectionItemOut<'a> {
        ProjectionItemOut {
            key,
            state: &view.state,
            metadata: ProjectionMetadataOut {
                created_at: &view.created_at,
                last_updated_at: &view.last_updated_at,
                version: view.version,
                size_in_bytes: file_len as u64,
            },
            tags: view.tags.as_deref().map(TagsOut::Pairs),
        }
    }
}

/// Tags as `[{"key":..,"value":..},..]`, from items or from files parsed in place.
pub enum TagsOut<'a> {
    Tags(&'a [Tag]),
    Pairs(&'a [(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)]),
}

impl Serialize for TagsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Pair<'b> {
            key: &'b str,
            value: &'b str,
        }
        match self {
            TagsOut::Tags(tags) => s.collect_seq(tags.iter()),
            TagsOut::Pairs(pairs) => s.collect_seq(pairs.iter().map(|(key, value)| Pair { key, value })),
        }
    }
}

/// A projection on the wire (borrowed, for encoding): the `item` of a streamed line and the body of `projection.get`.
#[derive(Serialize)]
pub struct ProjectionItemOut<'a> {
    pub key: &'a str,
    pub state: &'a RawValue,
    pub metadata: ProjectionMetadataOut<'a>,
    /// Absent for projections written by .NET Opossum (it keeps tags only in its index files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagsOut<'a>>,
}

impl<'a> From<&'a ProjectionItem> for ProjectionItemOut<'a> {
    fn from(item: &'a ProjectionItem) -> Self {
        let m = &item.metadata;
        ProjectionItemOut {
            key: &item.key,
            state: &item.state,
            metadata: ProjectionMetadataOut {
                created_at: &m.created_at,
                last_updated_at: &m.last_updated_at,
                version: m.version,
                size_in_bytes: m.size_in_bytes,
            },
            tags: item.tags.as_deref().map(TagsOut::Tags),
        }
    }
}

/// A projection's metadata on the wire: Opossum's `ProjectionMetadata` in the protocol's snake_case.
/// `size_in_bytes` is the projection file's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionMetadataOut<'a> {
    pub created_at: &'a str,
    pub last_updated_at: &'a str,
    pub version: u64,
    pub size_in_bytes: u64,
}

/// [`ProjectionMetadataOut`] as a client decodes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProjectionMetadataIn {
    pub created_at: String,
    pub last_updated_at: String,
    pub version: u64,
    pub size_in_bytes: u64,
}

/// A projection as a client decodes it (item lines and the `projection.get` answer).
#[derive(Debug, Deserialize)]
pub struct ProjectionItemIn {
    pub key: String,
    pub state: RawJson,
    pub metadata: ProjectionMetadataIn,
    #[serde(default)]
    pub tags: Option<Vec<Tag>>,
}

impl From<ProjectionItemIn> for ProjectionItem {
    fn from(w: ProjectionItemIn) -> Self {
        ProjectionItem {
            key: w.key,
            state: w.state,
            metadata: ProjectionMetadata {
                created_at: w.metadata.created_at,
                last_updated_at: w.metadata.last_updated_at,
                version: w.metadata.version,
                size_in_bytes: w.metadata.size_in_bytes,
            },
            tags: w.tags,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_made_from_a_file_decodes_back() {
        let state = RawValue::from_string(r#"{"Name":"Ada","n":[1,2]}"#.to_string()).unwrap();
        let metadata = ProjectionMetadata {
            created_at: "2024-01-01T00:00:00Z".into(),
            last_updated_at: "2024-01-02T00:00:00Z".into(),
            version: 3,
            size_in_bytes: 0,
        };
        let tags = vec![Tag::new("Tier", "Basic")];
        let file = super::super::format::encode_projection("k1", &state, &metadata, &tags);
        let json = ItemJson::from_file("k1", std::path::Path::new("k1.json"), &file).unwrap();
        let item = json.decode().unwrap();
        assert_eq!(item.key, "k1");
        assert_eq!(item.state.get(), state.get());
        assert_eq!(item.metadata.version, 3);
        assert_eq!(item.metadata.size_in_bytes, file.len() as u64);
        assert_eq!(item.tags, Some(tags));
        // Decoded and made again: the same bytes.
        assert_eq!(ItemJson::from_item(&item), json);
    }
}
