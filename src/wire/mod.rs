//! Wire protocol v1 (design.md §3.3): JSON Lines over a Unix stream socket.
//!
//! One UTF-8 JSON object per line, `\n`-terminated, at most [`MAX_FRAME_BYTES_DEFAULT`] bytes by default. Every
//! request carries `"id"` (a string or a number, echoed verbatim) and `"op"`. A request gets zero or more item lines
//! and then exactly one final line carrying `"ok"`. Errors are
//! `{"id":..,"ok":false,"error":{"code":"<snake_case>","message":"<human text>"}}`.
//!
//! This module is pure: parsing requests into typed bodies, and encoding response lines into byte buffers. The
//! server (`crate::server`) does the I/O; the client (`crate::client`) uses the same types to decode responses.
//! See docs/PROTOCOL.md for every op with examples.
//!
//! Layout: [`envelope`] (`id`, `op`, body parsing), [`request`] (request bodies), [`response`] (encoders and the
//! core ops' answers), [`projection`] (`projection.*` answers, framing the projection module's [`ItemJson`]),
//! [`error`] (error codes). Nothing below the server imports this module: the projection cache keeps
//! [`crate::projection::item::ItemJson`], which this module frames.

pub mod envelope;
pub mod error;
pub mod projection;
pub mod request;
pub mod response;

pub use envelope::{parse_body, parse_envelope, parse_envelope_whole, quote_input, Envelope, RequestId};
pub use error::{ErrorCode, ProtocolError, WireError};
pub use projection::*;
pub use request::*;
pub use response::*;

/// Protocol version reported by `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted by default, in bytes (excluding the `\n`). A longer line is answered with
/// `frame_too_large` and the connection is closed (the rest of the line cannot be told apart from the next request).
pub const MAX_FRAME_BYTES_DEFAULT: usize = crate::limits::FRAME_BYTES_DEFAULT;
/// The server's name in `hello`.
pub const SERVER_NAME: &str = "opossumd";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ERROR_MESSAGE_BYTES_MAX;
    use crate::model::{Query, ReadOptions};
    use serde::Serialize;

    fn line(out: &[u8]) -> serde_json::Value {
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(out).unwrap()
    }

    #[test]
    fn envelope_reads_id_and_op() {
        let e = parse_envelope(br#"{"id":7,"op":"head"}"#).unwrap();
        assert_eq!(e.id.as_json(), "7");
        assert_eq!(e.op, "head");
        let e = parse_envelope(br#"{"op":"head","id":"a\"b"}"#).unwrap();
        assert_eq!(e.id.as_json(), r#""a\"b""#);
    }

    #[test]
    fn envelope_errors_echo_what_they_can() {
        let (id, err) = parse_envelope(b"{nope").unwrap_err();
        assert_eq!((id.as_json(), err.code), ("null", ErrorCode::InvalidRequest));
        assert!(err.message.contains("malformed JSON"), "{err}");
        let (id, err) = parse_envelope(br#"{"op":"head"}"#).unwrap_err();
        assert_eq!(id.as_json(), "null");
        assert!(err.message.contains("missing \"id\""));
        let (_, err) = parse_envelope(br#"{"id":{"x":1},"op":"head"}"#).unwrap_err();
        assert!(err.message.contains("string or a number"));
        let (id, err) = parse_envelope(br#"{"id":3}"#).unwrap_err();
        assert_eq!(id.as_json(), "3");
        assert!(err.message.contains("missing \"op\""));
        let (_, err) = parse_envelope(b"[1,2]").unwrap_err();
        assert!(err.message.contains("a JSON object"), "{err}");
        let (_, err) = parse_envelope(b"[1,2").unwrap_err();
        assert!(err.message.contains("malformed JSON"), "{err}");
    }

    #[test]
    fn append_envelopes_read_from_their_prefix_still_get_the_whole_lines_errors() {
        let e = parse_envelope(br#"{"id":12,"op":"append","events":[}"#).unwrap();
        assert_eq!((e.id.as_json(), e.op.as_str()), ("12", "append"));
        let e = parse_envelope(r#"{"id":"é a","op":"append","x"#.as_bytes()).unwrap();
        assert_eq!(e.id.as_json(), r#""é a""#);
        // Ids other than plain digits or strings, and other ops, are read with the whole line as before.
        for line in
            [r#"{"id":012,"op":"append","events":[]}"#, r#"{"id":"a\"b","op":"append","#, r#"{"id":1,"op":"head","#]
        {
            assert!(parse_envelope(line.as_bytes()).is_err(), "{line}");
        }
        // What the append handler answers for a line `parse_envelope` read from its prefix: `parse_append`'s
        // refusal, then the whole line's envelope error when it has one (malformed JSON: id null; a second id).
        for (line, id, needle) in [
            (r#"{"id":5,"op":"append","events":[{"type":"A","data":{}}"#, "null", "malformed JSON"),
            (r#"{"id":5,"op":"append","events":[{"type":"A","data":{}}],"id":6}"#, "null", "duplicate field"),
            (r#"{"id":5,"op":"append","events":[{"type":"A","data":{}}]} x"#, "null", "malformed JSON"),
            (r#"{"id":5,"op":"append","events":[{"type":"A","data":{},"tag":[]}]}"#, "5", "events[0].tag"),
            (r#"{"id":5,"op":"append","events":[{"type":"A","data":{"x":1,}}]}"#, "null", "malformed JSON"),
        ] {
            let refusal = parse_append("append", line.as_bytes()).unwrap_err();
            let (got_id, message) = match parse_envelope_whole(line.as_bytes()) {
                Err((id, e)) => (id.as_json().to_string(), e.message),
                Ok(e) => (e.id.as_json().to_string(), refusal.message),
            };
            assert_eq!(got_id, id, "{line}");
            assert!(message.contains(needle), "{line}\n-> {message}");
        }
        let body = parse_append("append", br#"{"id":5,"op":"append","events":[{"type":"A","data":{"x": "y  z"}}]}"#);
        assert_eq!(body.unwrap().events[0].data.get(), r#"{"x": "y  z"}"#);
    }

    #[test]
    fn bodies_reject_unknown_fields_and_bad_positions() {
        let err = parse_body::<AppendRequest>("append", br#"{"id":1,"op":"append","events":[],"condtion":{}}"#);
        assert!(err.unwrap_err().message.contains("condtion"));
        for bad in [r#"-1"#, r#"1.5"#, r#""3""#] {
            let text = format!(r#"{{"id":1,"op":"read","after":{bad}}}"#);
            assert!(parse_body::<ReadRequest>("read", text.as_bytes()).is_err(), "{bad}");
        }
        let r = parse_body::<ReadRequest>("read", br#"{"id":1,"op":"read","limit":2,"backwards":true}"#).unwrap();
        assert_eq!(r.query, Query::All);
        assert_eq!(r.options(), ReadOptions { limit: Some(2), backwards: true, ..Default::default() });
        let err = parse_body::<ReadRequest>("read", br#"{"id":1,"op":"read","query":{"items":[{}]}}"#).unwrap_err();
        assert!(err.message.contains("at least one type or tag"), "{err}");
    }

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        let cases = [
            (r#"{"id":1,"op":"append","events":[{"type":"A","data":{},"tag":[]}]}"#, "events[0].tag"),
            (
                r#"{"id":1,"op":"append","events":[{"type":"A","data":{"x":[1,{}]}},{"type":"A","data":{},"tags":[{"key":"k","value":"v","vlaue":1}]}]}"#,
                "events[1].tags[0].vlaue",
            ),
            (
                r#"{"id":1,"op":"append","events":[{"type":"A","data":{}}],"condition":{"fail_if_events_match":"all","afterr":1}}"#,
                "condition.afterr",
            ),
            (r#"{"id":1,"op":"read","query":{"items":[{"types":["A"],"tag":[]}]}}"#, "query.items[0].tag"),
            (r#"{"id":1,"op":"read","query":{"items":[{"types":["A"]}],"x":1}}"#, "query.x"),
        ];
        for (text, path) in cases {
            let err = if text.contains("append") {
                parse_body::<AppendRequest>("append", text.as_bytes()).unwrap_err()
            } else {
                parse_body::<ReadRequest>("read", text.as_bytes()).unwrap_err()
            };
            assert!(err.message.contains(&format!("at {path}:")), "{text}\n-> {err}");
            assert!(!err.message.contains("line 1 column"), "{err}");
        }
        let err = parse_body::<ReadRequest>("read", br#"{"id":1,"op":"read","after":"3"}"#).unwrap_err();
        assert!(err.message.contains("at after:"), "{err}");
    }

    #[test]
    fn error_lines_quote_little_input() {
        let long = "x".repeat(100_000);
        let (_, err) = parse_envelope(format!(r#"{{"id":{{"a":"{long}"}},"op":"head"}}"#).as_bytes()).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message.len());
        let (id, err) = parse_envelope(format!(r#"{{"id":"{long}","op":"head"}}"#).as_bytes()).unwrap_err();
        assert_eq!(id.as_json(), "null");
        assert!(err.message.contains("limit"), "{err}");
        let (_, err) = parse_envelope(format!(r#"{{"id":1,"op":"{long}"}}"#).as_bytes()).unwrap_err();
        assert!(err.message.len() < 200 && err.code == ErrorCode::UnknownOp, "{err}");
        let mut out = Vec::new();
        encode_error(&mut out, &RequestId::number(1), &ProtocolError::invalid(long.clone()));
        assert!(out.len() < ERROR_MESSAGE_BYTES_MAX + 100, "{}", out.len());
        assert_eq!(quote_input("añb", 2), "a... (4 bytes)");
    }

    #[test]
    fn encoders_write_single_lines() {
        let id = RequestId::string("x");
        let mut out = Vec::new();
        encode_ok(&mut out, &id, &HeadResponse { head: 3 });
        assert_eq!(line(&out), serde_json::json!({"id":"x","ok":true,"head":3}));
        out.clear();
        encode_error(&mut out, &RequestId::number(4), &ProtocolError::invalid("bad\nthing"));
        assert_eq!(
            line(&out),
            serde_json::json!({"id":4,"ok":false,"error":{"code":"invalid_request","message":"bad\nthing"}})
        );
        out.clear();
        #[derive(Serialize)]
        struct Nothing {}
        encode_ok(&mut out, &id, &Nothing {});
        assert_eq!(line(&out), serde_json::json!({"id":"x","ok":true}));
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
    }
}
