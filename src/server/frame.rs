//! Splitting a connection's byte stream into request lines, within the frame limit, the line timeout and the shared
//! request-buffer budget.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::connection::BoxedRead;

use crate::limits::{LINE_BUFFERS_BYTES_TOTAL_MAX, LINE_BUFFER_BYTES_INITIAL};

pub(super) enum LineError {
    TooLarge,
    /// A started line did not arrive in full within the line timeout.
    Timeout,
    /// Growing the buffer for a long line would exceed [`LINE_BUFFERS_BYTES_TOTAL_MAX`].
    MemoryBusy,
    Io(io::Error),
}

/// Splits a byte stream into `\n`-terminated lines of at most `max` bytes. The buffer starts at
/// [`LINE_BUFFER_BYTES_INITIAL`]; what it grows beyond that is taken from a budget shared by all connections and
/// given back when it shrinks or the connection ends.
pub(super) struct LineReader {
    reader: BoxedRead,
    pub(super) buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`; `buf[start..scanned]` holds no `\n`.
    start: usize,
    scanned: usize,
    end: usize,
    max: usize,
    budget: Arc<AtomicUsize>,
    timeout: Duration,
    /// Since when this reader has been waiting for the rest of a started line: the first byte's arrival, or the
    /// call that found part of a pipelined line buffered (time spent answering earlier requests does not count).
    line_started: Option<tokio::time::Instant>,
}

impl LineReader {
    pub(super) fn new(reader: BoxedRead, max: usize, budget: Arc<AtomicUsize>, timeout: Duration) -> LineReader {
        LineReader {
            reader,
            buf: vec![0; LINE_BUFFER_BYTES_INITIAL],
            start: 0,
            scanned: 0,
            end: 0,
            max,
            budget,
            timeout,
            line_started: None,
        }
    }

    /// Whether a complete line is already buffered (more pipelined requests to answer before writing).
    pub(super) fn has_line(&self) -> bool {
        self.buf[self.scanned..self.end].contains(&b'\n')
    }

    /// Resizes the buffer to `len`, taking the growth beyond the initial size from the shared budget.
    fn resize(&mut self, len: usize) -> Result<(), LineError> {
        let held = self.buf.len().saturating_sub(LINE_BUFFER_BYTES_INITIAL);
        let wanted = len.saturating_sub(LINE_BUFFER_BYTES_INITIAL);
        if wanted > held {
            let more = wanted - held;
            let before = self.budget.fetch_add(more, Ordering::SeqCst);
            if before + more > LINE_BUFFERS_BYTES_TOTAL_MAX {
                self.budget.fetch_sub(more, Ordering::SeqCst);
                return Err(LineError::MemoryBusy);
            }
        } else {
            self.budget.fetch_sub(held - wanted, Ordering::SeqCst);
        }
        if len < self.buf.len() {
            self.buf = vec![0; len];
        } else {
            self.buf.resize(len, 0);
        }
        Ok(())
    }

    /// The next line's range in `buf` (valid until the next call), or `None` at end of stream. Bytes after the last
    /// `\n` at end of stream count as a final line.
    pub(super) async fn next_line(&mut self) -> Result<Option<(usize, usize)>, LineError> {
        self.line_started = (self.start < self.end).then(tokio::time::Instant::now);
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) {
                let newline = self.scanned + i;
                let range = (self.start, newline);
                self.start = newline + 1;
                self.scanned = self.start;
                if newline - range.0 > self.max {
                    return Err(LineError::TooLarge);
                }
                return Ok(Some(range));
            }
            self.scanned = self.end;
            if self.end - self.start > self.max {
                return Err(LineError::TooLarge);
            }
            if self.start == self.end {
                self.start = 0;
                self.scanned = 0;
                self.end = 0;
                if self.buf.len() > 16 * LINE_BUFFER_BYTES_INITIAL {
                    self.resize(LINE_BUFFER_BYTES_INITIAL)?;
                }
            } else if self.end == self.buf.len() && self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.scanned -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(self.max + 2).max(self.buf.len() + 1);
                self.resize(grown)?;
            }
            let read = self.reader.read(&mut self.buf[self.end..]);
            let n = match self.line_started {
                // Inside a line: the rest must arrive before the line's deadline.
                Some(started) => match tokio::time::timeout_at(started + self.timeout, read).await {
                    Ok(n) => n,
                    Err(_) => return Err(LineError::Timeout),
                },
                None => read.await,
            }
            .map_err(LineError::Io)?;
            if n == 0 {
                if self.start == self.end {
                    return Ok(None);
                }
                let range = (self.start, self.end);
                self.start = self.end;
                self.scanned = self.end;
                return Ok(Some(range));
            }
            if self.line_started.is_none() {
                self.line_started = Some(tokio::time::Instant::now());
            }
            self.end += n;
        }
    }
}

impl Drop for LineReader {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.buf.len().saturating_sub(LINE_BUFFER_BYTES_INITIAL), Ordering::SeqCst);
    }
}
