//! Applying a batch of changes in stream order (in progress).

use diesel::QueryResult;

use crate::change::Change;
use crate::sql::AnyConnection;

/// What became of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Applied,
    /// Older than what its row already reflects: skipped.
    Stale,
    /// A patch of a row that does not exist: skipped.
    Missing,
}

/// Applies `changes`, each with its stream sequence, inside the caller's transaction.
pub fn apply(_conn: &mut AnyConnection, _changes: &[(i64, &Change)]) -> QueryResult<Vec<Outcome>> {
    todo!()
}
