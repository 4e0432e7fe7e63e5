//! The read item line, decoded without serde's general machinery when it has the shape the daemon frames
//! (`wire::encode_item_view`, byte for byte):
//!
//! ```text
//! {"id":<number>,"event":{"position":<digits>,"type":"<string>","data":<json>,"tags":[{"key":"<string>","value":"<string>"},...],"metadata":<json>}}
//! ```
//!
//! One UTF-8 check of the whole line; the position's digits read directly; strings without a backslash copied
//! straight from the line; data and metadata delimited (and checked to be JSON) by serde_json's skip of one value
//! and copied once, never re-validated. Any other shape (another field order, whitespace, an escape in a string,
//! an error anywhere) returns `None`, and the caller decodes the line with serde_json, which accepts every valid
//! spelling and words the error for a malformed one. So this path only ever decodes lines serde_json decodes to
//! the same event.

use serde_json::value::RawValue;

use crate::model::{SequencedEvent, Tag};

/// The event of an item line of the daemon's shape, or `None` (decode it the general way).
pub(super) fn event_line(line: &[u8]) -> Option<SequencedEvent> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut at = Cursor { text, pos: 0 };
    at.literal("{\"id\":")?;
    at.digits()?;
    at.literal(",\"event\":{\"position\":")?;
    let position = at.u64()?;
    at.literal(",\"type\":")?;
    let event_type = at.string()?.to_owned();
    at.literal(",\"data\":")?;
    let data = at.json()?;
    at.literal(",\"tags\":[")?;
    let mut tags = Vec::new();
    if !at.literal_if("]") {
        loop {
            at.literal("{\"key\":")?;
            let key = at.string()?;
            at.literal(",\"value\":")?;
            let value = at.string()?;
            at.literal("}")?;
            tags.push(Tag::new(key, value));
            if at.literal_if("]") {
                break;
            }
            at.literal(",")?;
        }
    }
    at.literal(",\"metadata\":")?;
    let metadata = at.json()?;
    at.literal("}}")?;
    (at.pos == text.len()).then_some(SequencedEvent { position, event_type, data, tags, metadata })
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn literal(&mut self, expected: &str) -> Option<()> {
        self.literal_if(expected).then_some(())
    }

    fn literal_if(&mut self, expected: &str) -> bool {
        let found = self.rest().starts_with(expected);
        if found {
            self.pos += expected.len();
        }
        found
    }

    /// One or more ASCII digits.
    fn digits(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        (n > 0).then(|| {
            self.pos += n;
            &rest[..n]
        })
    }

    /// A JSON number that is a u64 (no sign, fraction or exponent; no leading zero but `0` itself).
    fn u64(&mut self) -> Option<u64> {
        let digits = self.digits()?;
        if digits.len() > 1 && digits.starts_with('0') {
            return None;
        }
        if matches!(self.rest().as_bytes().first(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        digits.parse().ok()
    }

    /// A JSON string without escapes or control characters: its text.
    fn string(&mut self) -> Option<&'a str> {
        let rest = self.rest().strip_prefix('"')?;
        let end = rest.bytes().position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest.as_bytes()[end] != b'"' {
            return None;
        }
        self.pos += end + 2;
        Some(&rest[..end])
    }

    /// One JSON value (checked by serde_json's skip), copied.
    fn json(&mut self) -> Option<Box<RawValue>> {
        let rest = self.rest();
        // A value starting with whitespace is not the daemon's spelling (and would make the offset below include it).
        if rest.starts_with([' ', '\t', '\n', '\r']) {
            return None;
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
        let value = values.next()?.ok()?;
        self.pos += values.byte_offset();
        Some(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientError, StreamItem};
    use crate::store::EventView;
    use crate::wire::{encode_item, RequestId};

    fn event(event_type: &str, data: &str, tags: &[(&str, &str)], metadata: &str) -> SequencedEvent {
        SequencedEvent {
            position: 42,
            event_type: event_type.into(),
            data: RawValue::from_string(data.into()).unwrap(),
            tags: tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect(),
            metadata: RawValue::from_string(metadata.into()).unwrap(),
        }
    }

    fn line(e: &SequencedEvent) -> Vec<u8> {
        let mut out = Vec::new();
        encode_item(&mut out, &RequestId::number(7), e);
        out
    }

    fn same(a: &SequencedEvent, b: &SequencedEvent) {
        assert_eq!(a.position, b.position);
        assert_eq!(a.event_type, b.event_type);
        assert_eq!(a.data.get(), b.data.get());
        assert_eq!(a.tags, b.tags);
        assert_eq!(a.metadata.get(), b.metadata.get());
    }

    /// What serde_json alone makes of the line (the general path).
    fn general(line: &[u8]) -> SequencedEvent {
        #[derive(serde::Deserialize)]
        struct Item {
            event: SequencedEvent,
        }
        serde_json::from_slice::<Item>(line).unwrap().event
    }

    #[test]
    fn the_daemon_spelling_is_decoded_directly_and_equals_serde_json() {
        let cases = [
            event("StudentEnrolled", r#"{"a":1}"#, &[("item", "0000042")], r#"{"timestamp":"t"}"#),
            event("T", r#"{"nested":{"deep":[1,2,{"x":"y}],{["}],"s":"q\"uote\\ \u0001 \n"},"n":-1.5e3}"#, &[], "{}"),
            event("Ünïcødé✓", r#"{"name":"Zoë 😀","esc":"\u00e9\ud83d\ude00"}"#, &[("ключ", "значение 😀")], "{}"),
            event("T", r#"[1,"two",null,true,false,{}]"#, &[("a", "1"), ("b", "2"), ("c", "")], r#"{"m":[{}]}"#),
            event("T", "7", &[("k", "v")], "null"),
            event("T", r#""a string""#, &[("k", "v")], r#"{"correlationId":"c","causationId":null}"#),
        ];
        for e in &cases {
            let line = line(e);
            let fast =
                event_line(&line).unwrap_or_else(|| panic!("not the fast path: {}", String::from_utf8_lossy(&line)));
            same(&fast, e);
            same(&fast, &general(&line));
        }
    }

    #[test]
    fn the_view_encoder_spelling_is_decoded_directly() {
        // What the server sends for a journal read (`encode_item_view`) must stay the fast path.
        let e = event("StudentEnrolled", r#"{"a":"b"}"#, &[("item", "1"), ("x", "y")], r#"{"timestamp":"t"}"#);
        let mut out = Vec::new();
        crate::wire::encode_item_view(&mut out, &RequestId::number(7), &EventView::from_event(&e));
        assert_eq!(out, line(&e));
        same(&event_line(&out).expect("fast path"), &e);
    }

    #[test]
    fn escaped_strings_and_other_spellings_take_the_general_path_with_the_same_result() {
        let escaped = event("Type\"With\\Escapes\n", "{}", &[("k\u{1}", "v\"")], "{}");
        let other_spellings: [&[u8]; 4] = [
            br#"{"id":7,"event":{"type":"T","position":1,"data":{},"tags":[],"metadata":{}}}"#,
            br#"{"id":7, "event":{"position":1,"type":"T","data":{},"tags":[],"metadata":{}}}"#,
            br#"{"id":"seven","event":{"position":1,"type":"T","data":{},"tags":[],"metadata":{}}}"#,
            br#"{"id":7,"event":{"position":1,"type":"T","data": {},"tags":[],"metadata":{}}}"#,
        ];
        assert!(event_line(&line(&escaped)).is_none());
        same(&SequencedEvent::decode(&line(&escaped)).unwrap(), &escaped);
        for l in other_spellings {
            assert!(event_line(l).is_none(), "{}", String::from_utf8_lossy(l));
            let e = SequencedEvent::decode(l).unwrap();
            assert_eq!((e.position, e.event_type.as_str(), e.data.get()), (1, "T", "{}"));
        }
    }

    #[test]
    fn malformed_lines_are_protocol_errors() {
        let good = String::from_utf8(line(&event("T", r#"{"a":[1,2]}"#, &[("k", "v")], "{}"))).unwrap();
        let malformed: Vec<Vec<u8>> = vec![
            good.replace(r#"{"a":[1,2]}"#, r#"{"a":[1,2}"#).into_bytes(),
            good.replace(r#"{"a":[1,2]}"#, r#"{"a":tru}"#).into_bytes(),
            good.replace(r#""position":42"#, r#""position":-42"#).into_bytes(),
            good.replace(r#""position":42"#, r#""position":4.2"#).into_bytes(),
            good.replace(r#""position":42"#, r#""position":042"#).into_bytes(),
            good.replace(r#""position":42"#, r#""position":99999999999999999999999"#).into_bytes(),
            good.replace(r#""tags":[{"key":"k","value":"v"}]"#, r#""tags":[{"key":"k"}]"#).into_bytes(),
            good.replace(r#""tags":[{"key":"k","value":"v"}]"#, r#""tags":[{"key":"k","value":"v"},]"#).into_bytes(),
            good.replace(r#""type":"T""#, r#""type":"T"#).into_bytes(),
            good.replace(r#""type":"T""#, "\"type\":\"T\u{1}\"").into_bytes(),
            good.as_bytes()[..good.len() - 3].to_vec(),
            format!("{}x\n", good.trim_end()).into_bytes(),
            [&good.as_bytes()[..20], &[0xff, 0xfe], &good.as_bytes()[20..]].concat(),
        ];
        for l in &malformed {
            assert!(event_line(l).is_none(), "fast path took {}", String::from_utf8_lossy(l));
            match SequencedEvent::decode(l) {
                Err(ClientError::Protocol(message)) => assert!(message.starts_with("bad item line"), "{message}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(l)),
            }
        }
    }
}
