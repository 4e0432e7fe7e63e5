//! Error codes and the error of a final error line, and how store and projection errors map onto them.

use serde::{Deserialize, Serialize};

use crate::projection::ProjectionError;
use crate::store::StoreError;

/// Error codes of the final error line (`error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed JSON, a missing or ill-typed field, a rule of the DCB model broken (empty type, bad tag, ...).
    InvalidRequest,
    /// A named limit was exceeded (events per append, bytes per event or append, a name's length, a projection
    /// state's size, ...): the message names the limit, the value and the maximum. Nothing was written.
    LimitExceeded,
    /// The append's condition matched an event: nothing was written.
    AppendConditionFailed,
    /// The append's tracking position is not above its source's last one (`tracking.get`): nothing was written.
    TrackingConflict,
    /// The request line is longer than `max_frame_bytes`; the connection is closed after this line.
    FrameTooLarge,
    /// `op` names no operation this server knows.
    UnknownOp,
    /// The request names something that does not exist (projections, ...).
    NotFound,
    /// A projection put's `expected_version` is not the key's current version: nothing was written.
    VersionConflict,
    /// The store failed to read or write (I/O error, corrupt file, store poisoned after a failed fsync).
    StorageError,
    /// The server is at its connection limit; the connection is closed after this line.
    Busy,
    /// The server is stopping (SIGTERM) and takes no new requests.
    ShuttingDown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidRequest,
        ErrorCode::LimitExceeded,
        ErrorCode::AppendConditionFailed,
        ErrorCode::TrackingConflict,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownOp,
        ErrorCode::NotFound,
        ErrorCode::VersionConflict,
        ErrorCode::StorageError,
        ErrorCode::Busy,
        ErrorCode::ShuttingDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::AppendConditionFailed => "append_condition_failed",
            ErrorCode::TrackingConflict => "tracking_conflict",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error to be sent as a final error line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ProtocolError {
        ProtocolError::new(ErrorCode::InvalidRequest, message)
    }
}

impl From<StoreError> for ProtocolError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::Invalid(_) | StoreError::NeedsJournal { .. } => ErrorCode::InvalidRequest,
            StoreError::TrackingConflict { .. } => ErrorCode::TrackingConflict,
            StoreError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            StoreError::ConditionFailed { .. } => ErrorCode::AppendConditionFailed,
            StoreError::Closed => ErrorCode::ShuttingDown,
            StoreError::Io(_)
            | StoreError::Corrupt { .. }
            | StoreError::MissingEvent { .. }
            | StoreError::Poisoned(_)
            | StoreError::IndexFlush
            | StoreError::Locked(_) => ErrorCode::StorageError,
        };
        ProtocolError::new(code, e.to_string())
    }
}

impl From<ProjectionError> for ProtocolError {
    fn from(e: ProjectionError) -> Self {
        let code = match &e {
            // A name or key that could leave its directory, a bad tag, a state too large, a key whose file name
            // another key already uses: the request cannot be stored as it is.
            ProjectionError::InvalidName(_) | ProjectionError::Invalid(_) | ProjectionError::KeyCollision { .. } => {
                ErrorCode::InvalidRequest
            }
            ProjectionError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            ProjectionError::NotFound { .. } => ErrorCode::NotFound,
            ProjectionError::VersionConflict { .. } => ErrorCode::VersionConflict,
            ProjectionError::Closed => ErrorCode::ShuttingDown,
            ProjectionError::Io(_) | ProjectionError::Corrupt { .. } | ProjectionError::Poisoned(_) => {
                ErrorCode::StorageError
            }
        };
        ProtocolError::new(code, e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
}
