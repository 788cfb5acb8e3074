//! The JSON of message bodies. It is serde_json's `Value`, except that every number keeps
//! the text it was sent as: `66.899999999999991` stays those digits, and `1E-22` stays
//! `1E-22`, where a 64-bit float would change both. Decimals are read from that text
//! (`parse::decimal`), so no digit is lost or invented; `json` columns store it as sent.
//!
//! Why a second crate: serde_json's `arbitrary_precision` feature would do the same, but
//! Cargo turns it on for the whole build, and it breaks untagged and flattened enums
//! elsewhere (async-nats' JetStream replies among them). `serde_json_lenient` is
//! serde_json's code as a separate crate, so its `arbitrary_precision` reaches bodies
//! only. Its lenient extensions (comments, trailing commas) are switched off here: bodies
//! are strict JSON.

pub use serde_json_lenient::{Error, Map, Number, Value, json};

/// Parses one strict JSON document (RFC 8259): no comments, no trailing commas.
pub fn from_slice(bytes: &[u8]) -> Result<Value, Error> {
    let mut deserializer = serde_json_lenient::Deserializer::from_slice(bytes);
    deserializer.set_ignore_trailing_commas(false);
    deserializer.set_allow_comments(false);
    let value = serde::Deserialize::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// [`from_slice`] of a string.
pub fn from_str(text: &str) -> Result<Value, Error> {
    from_slice(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_the_text_they_were_sent_as() {
        let value = from_str(
            r#"{"a": 66.899999999999991, "b": 1E-22, "c": -0.10, "d": 18446744073709551616}"#,
        )
        .unwrap();
        let text = |key: &str| match &value[key] {
            Value::Number(n) => n.as_str().to_owned(),
            other => panic!("{key} is {other}"),
        };
        assert_eq!(text("a"), "66.899999999999991");
        assert_eq!(text("b"), "1E-22");
        assert_eq!(text("c"), "-0.10");
        assert_eq!(text("d"), "18446744073709551616");
        // Written back as sent, too (json columns).
        assert_eq!(
            value.to_string(),
            r#"{"a":66.899999999999991,"b":1E-22,"c":-0.10,"d":18446744073709551616}"#
        );
        // Integers still read as integers.
        assert_eq!(from_str("[7]").unwrap()[0].as_i64(), Some(7));
    }

    #[test]
    fn bodies_are_strict_json() {
        for bad in [
            r#"{"a": 1,}"#,
            "[1, 2,]",
            r#"{"a": 1 /* note */}"#,
            "// x\n{}",
            "{} {}",
            "{'a': 1}",
        ] {
            assert!(from_str(bad).is_err(), "{bad} was accepted");
        }
        assert!(from_str(" {\"a\": [1, 2.5e3, null]} \n").is_ok());
    }
}
