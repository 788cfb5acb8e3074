//! Entity hints and the subjects messages travel on.
//!
//! Every message is published on `<prefix>.<entity>.<message id>`, with `_` standing for
//! "no entity hint". Putting the id in the subject lets the status endpoint find a message
//! that is still waiting in the stream (a direct get of the last message on
//! `<prefix>.*.<id>`) without any database write on the ingest path.

use std::fmt;

use uuid::Uuid;

/// The subject token used when a message carries no entity hint.
pub const NO_ENTITY_TOKEN: &str = "_";
/// Longest entity hint accepted.
pub const MAX_ENTITY_LEN: usize = 64;

/// A validated entity hint: 1 to 64 characters of `[A-Za-z0-9_-]`, and not `_` alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityName(String);

/// Why an entity hint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntityNameError {
    #[error("entity name is empty")]
    Empty,
    #[error("entity name is longer than {MAX_ENTITY_LEN} characters")]
    TooLong,
    #[error(
        "entity name {0:?} has a character outside [A-Za-z0-9_-]; use letters, digits, '_' or '-'"
    )]
    InvalidCharacter(String),
    #[error("entity name \"_\" is reserved for messages without an entity hint")]
    Reserved,
}

impl EntityName {
    /// Validates an entity hint taken from a URL path or header.
    pub fn parse(text: &str) -> Result<Self, EntityNameError> {
        if text.is_empty() {
            return Err(EntityNameError::Empty);
        }
        if text.len() > MAX_ENTITY_LEN {
            return Err(EntityNameError::TooLong);
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(EntityNameError::InvalidCharacter(text.to_owned()));
        }
        if text == NO_ENTITY_TOKEN {
            return Err(EntityNameError::Reserved);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The subject a message is published on.
pub fn message_subject(prefix: &str, entity: Option<&EntityName>, message_id: Uuid) -> String {
    let entity = entity.map_or(NO_ENTITY_TOKEN, EntityName::as_str);
    format!("{prefix}.{entity}.{}", message_id.as_hyphenated())
}

/// The subject filter that finds a message by id, whatever its entity.
pub fn lookup_subject(prefix: &str, message_id: Uuid) -> String {
    format!("{prefix}.*.{}", message_id.as_hyphenated())
}

/// The subject filter a worker consumes: every ingested message.
pub fn ingest_filter(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Whether a concrete or wildcard `subject` is matched by the stream subject `pattern`
/// (NATS rules: `*` matches one token, a final `>` one or more).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["order", "Line_Item", "tpch-orders", "a", "x9"] {
            assert_eq!(EntityName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_names_that_would_break_subjects() {
        assert_eq!(EntityName::parse(""), Err(EntityNameError::Empty));
        assert_eq!(EntityName::parse("_"), Err(EntityNameError::Reserved));
        assert_eq!(
            EntityName::parse(&"a".repeat(65)),
            Err(EntityNameError::TooLong)
        );
        for bad in ["a.b", "a b", "a*", "a>", "ä", "a\n", "a/b"] {
            assert!(
                matches!(
                    EntityName::parse(bad),
                    Err(EntityNameError::InvalidCharacter(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn subjects_put_the_id_last() {
        let id = Uuid::nil();
        let order = EntityName::parse("order").unwrap();
        assert_eq!(
            message_subject("messages.ingest", Some(&order), id),
            "messages.ingest.order.00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            message_subject("messages.ingest", None, id),
            "messages.ingest._.00000000-0000-0000-0000-000000000000"
        );
        assert!(subject_matches(
            &lookup_subject("messages.ingest", id),
            &message_subject("messages.ingest", Some(&order), id)
        ));
    }

    #[test]
    fn subject_matching_follows_nats_rules() {
        assert!(subject_matches("messages.>", "messages.ingest.>"));
        assert!(subject_matches("messages.>", "messages.ingest.a.b"));
        assert!(!subject_matches("messages.>", "messages"));
        assert!(subject_matches("messages.*.x", "messages.y.x"));
        assert!(!subject_matches("messages.*", "messages.y.x"));
        assert!(!subject_matches("other.>", "messages.ingest.>"));
        assert!(!subject_matches("messages.*.>", "messages.>"));
    }
}
