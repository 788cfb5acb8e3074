//! What a failed statement says about its cause, read from diesel's error kind only.
//!
//! Some causes have no kind of their own (diesel reports SQLite's `SQLITE_BUSY` and
//! PostgreSQL's deadlocks as `Unknown`): callers settle those by behaviour instead (see
//! [`probe`](super::probe) and the worker's message-by-message retry).

use diesel::result::{DatabaseErrorKind, Error};

/// The cause of a failed statement, as far as its kind tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The rows broke a constraint, or could not be encoded: writing them again fails again.
    Data,
    /// Contention or a lost connection: the same write may succeed later.
    Transient,
    /// The kind does not tell.
    Unknown,
}

/// Classifies `err` by its kind.
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::DatabaseError(kind, _) => match kind {
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::RestrictViolation
            | DatabaseErrorKind::ExclusionViolation => ErrorClass::Data,
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => ErrorClass::Transient,
            _ => ErrorClass::Unknown,
        },
        Error::SerializationError(_) => ErrorClass::Data,
        Error::BrokenTransactionManager => ErrorClass::Transient,
        _ => ErrorClass::Unknown,
    }
}

/// Whether the kind of `err` says the same write may succeed when retried.
pub fn is_transient(err: &Error) -> bool {
    classify(err) == ErrorClass::Transient
}
