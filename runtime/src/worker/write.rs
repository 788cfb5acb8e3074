//! The batch transaction: status rows and entity rows committed together, and telling
//! rows the database refuses from a database that is unavailable.

use std::collections::HashSet;

use super::EntitySchema;
use crate::{
    db::{self, AnyConnection, ErrorClass},
    status::{self, StatusRecord},
};

/// One message's part of a write.
pub(super) struct Pending<R> {
    /// Where the message is in its batch.
    pub index: usize,
    pub record: StatusRecord,
    pub rows: R,
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// Messages the database refused (by index in the batch), with the error.
    pub refused: Vec<(usize, diesel::result::Error)>,
    /// Messages already persisted by an earlier delivery, so not written again.
    pub skipped: usize,
}

/// Why nothing of a batch could be written: retry it later.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] diesel::result::Error),
    #[error("writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Writes a batch in one transaction. When it fails and the database is fine, writes
/// each message alone so only the messages whose rows the database refuses are refused.
pub(super) fn write_batch<S: EntitySchema>(
    schema: &S,
    conn: &mut AnyConnection,
    batch: &[Pending<S::Rows>],
) -> Result<Written, WriteError> {
    let err = match write(schema, conn, batch) {
        Ok(skipped) => {
            return Ok(Written {
                refused: Vec::new(),
                skipped,
            });
        }
        Err(err) => database_at_fault(conn, err)?,
    };
    tracing::warn!(error = %err, messages = batch.len(), "batch refused by the database; writing message by message");
    let mut written = Written::default();
    for item in batch {
        match write_alone(schema, conn, item)? {
            Ok(skipped) => written.skipped += skipped,
            Err(err) => written.refused.push((item.index, err)),
        }
    }
    Ok(written)
}

/// Writes one message in its own transaction. Its rows are at fault only if the database
/// refuses them by a data error, or twice while taking other writes: a deadlock or a
/// lock timeout (errors without a kind of their own) passes on the second try.
fn write_alone<S: EntitySchema>(
    schema: &S,
    conn: &mut AnyConnection,
    item: &Pending<S::Rows>,
) -> Result<diesel::QueryResult<usize>, WriteError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match write(schema, conn, std::slice::from_ref(item)) {
            Ok(skipped) => return Ok(Ok(skipped)),
            Err(err) => database_at_fault(conn, err)?,
        };
        if db::classify(&err) == ErrorClass::Data || attempts == 2 {
            return Ok(Err(err));
        }
    }
}

/// `Err` when a failed write is the database's fault: its kind says so (a lost
/// connection, a serialization failure), or the database does not take a write now.
fn database_at_fault(
    conn: &mut AnyConnection,
    err: diesel::result::Error,
) -> Result<diesel::result::Error, WriteError> {
    if db::is_transient(&err) || db::probe(conn).is_err() {
        Err(WriteError::Unavailable(err))
    } else {
        Ok(err)
    }
}

/// One write transaction; returns how many of `items` were already persisted (skipped).
fn write<S: EntitySchema>(
    schema: &S,
    conn: &mut AnyConnection,
    items: &[Pending<S::Rows>],
) -> diesel::QueryResult<usize> {
    db::write_transaction(conn, |conn| {
        // The status rows go first and fence the entity rows: only messages this
        // transaction claims (not persisted before, by anyone) contribute rows.
        let mut seen = HashSet::with_capacity(items.len());
        let records: Vec<StatusRecord> = items
            .iter()
            .filter(|item| seen.insert(item.record.message_id))
            .map(|item| item.record.clone())
            .collect();
        let mut claimed = status::claim(conn, &records)?;
        let skipped = records.len() - claimed.len();
        let mut rows = S::Rows::default();
        for item in items {
            // `remove`: a message id twice in one batch contributes its rows once.
            if claimed.remove(&item.record.message_id) {
                schema.merge(&mut rows, item.rows.clone());
            }
        }
        schema.write(conn, &rows)?;
        Ok(skipped)
    })
}
