//! W3C Trace Context `traceparent` (<https://www.w3.org/TR/trace-context/>): read from a
//! client's request by nats-api, or started there, carried in the envelope, and recorded
//! on the worker's spans, so one trace id joins every log line about a message.
//!
//! `version "-" trace-id "-" parent-id "-" trace-flags`, lower-case hex:
//! `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.

use std::fmt;

use uuid::Uuid;

/// The `traceparent` header's name (HTTP) and the envelope field's.
pub const TRACEPARENT: &str = "traceparent";

/// A valid `traceparent`, kept as the version 00 fields it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

/// Sampled: the only flag of version 00.
const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// Reads a `traceparent` value; `None` when it is not valid. A version above 00 is read
    /// as its version 00 fields, as the specification asks; version `ff`, upper-case hex,
    /// and all-zero trace or parent ids are invalid.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim_matches([' ', '\t']);
        let bytes = text.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex(&text[0..2])? as u8;
        match version {
            0xff => return None,
            // Version 00 has exactly four fields; later versions may append `-…`.
            0 if bytes.len() != 55 => return None,
            _ if bytes.len() > 55 && bytes[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = hex(&text[3..35])?;
        let parent_id = hex(&text[36..52])? as u64;
        let flags = hex(&text[53..55])? as u8;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            // Version 00 defines only the sampled bit; others are not passed on.
            flags: flags & SAMPLED,
        })
    }

    /// A new trace (sampled), with a random trace id and parent id.
    pub fn start() -> Self {
        Self {
            trace_id: Uuid::new_v4().as_u128(),
            parent_id: new_span_id(),
            flags: SAMPLED,
        }
    }

    /// The same trace, with `self` as the parent of a new span: what a participant passes
    /// on downstream.
    pub fn child(&self) -> Self {
        Self {
            parent_id: new_span_id(),
            ..*self
        }
    }

    /// A traceparent of these ids; `None` when either is zero (invalid).
    pub fn from_ids(trace_id: u128, parent_id: u64, sampled: bool) -> Option<Self> {
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags: if sampled { SAMPLED } else { 0 },
        })
    }

    /// The trace id, parent id and flags as numbers.
    pub(crate) fn ids(&self) -> (u128, u64, u8) {
        (self.trace_id, self.parent_id, self.flags)
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent (span) id, 16 lower-case hex digits.
    pub fn parent_id(&self) -> String {
        format!("{:016x}", self.parent_id)
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Lower-case hex only: the specification refuses upper case.
fn hex(text: &str) -> Option<u128> {
    if text.is_empty() || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

/// A random, non-zero 64-bit span id (from the same generator as message ids).
fn new_span_id() -> u64 {
    (Uuid::new_v4().as_u128() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_the_specifications_example() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id(), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), EXAMPLE);
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-next";
        let parent = TraceParent::parse(later).unwrap();
        assert_eq!(parent.to_string(), EXAMPLE, "unknown flags are dropped");
    }

    #[test]
    fn children_keep_the_trace_and_new_traces_are_fresh() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.parent_id(), parent.parent_id());
        let (one, two) = (TraceParent::start(), TraceParent::start());
        assert_ne!(one.trace_id(), two.trace_id());
        assert_eq!(TraceParent::parse(&one.to_string()), Some(one));
    }
}
