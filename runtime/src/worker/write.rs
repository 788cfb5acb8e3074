//! The batch transaction: status rows and entity rows committed together, and telling
//! rows the database refuses from a database that is unavailable.

use std::collections::HashSet;

use uuid::Uuid;

use diesel::result::DatabaseErrorKind;

use crate::{
    apply::{self, Absent, Outcome, Sequenced},
    change::Change,
    db::{self, AnyConnection, ErrorClass},
    status::{self, MessageState, StatusRecord},
};

/// One message's part of a write.
#[derive(Debug)]
pub struct Pending {
    /// Where the message is in its batch.
    pub index: usize,
    /// Its status row; `stream_sequence` (with the batch's base) orders its changes
    /// against others of their keys.
    pub record: StatusRecord,
    /// Its own row's change, then its fanned-out records'.
    pub changes: Vec<Change>,
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct Written {
    /// Messages the database refused (by index in the batch), with why: for a unique
    /// violation, the key's values and the JSON path of the row.
    pub refused: Vec<(usize, String)>,
    /// Messages already persisted by an earlier delivery, so not written again.
    pub skipped: usize,
    /// Messages skipped as older than their rows (or patches of missing rows).
    pub stale: usize,
    /// Rows written, by table: those of the messages this write applied (not the
    /// skipped, stale or refused ones).
    pub rows: CountsByName,
}

/// What one write transaction did.
#[derive(Debug, Default)]
struct Committed {
    skipped: usize,
    stale: usize,
    rows: CountsByName,
}

/// Counts by name, for a handful of tables or entities: a short list, not a map.
#[derive(Debug, Default, PartialEq)]
pub struct CountsByName(pub Vec<(&'static str, u64)>);

impl CountsByName {
    pub fn add(&mut self, name: &'static str, n: u64) {
        match self.0.iter_mut().find(|(known, _)| *known == name) {
            Some((_, count)) => *count += n,
            None => self.0.push((name, n)),
        }
    }

    /// Each change's own row and its children's rows.
    fn add_changes(&mut self, changes: &[Change]) {
        for change in changes {
            self.add(change.entity.table.name, 1);
            for child in &change.children {
                self.add(child.entity.table.name, child.rows.len() as u64);
            }
        }
    }

    fn merge(&mut self, other: CountsByName) {
        for (name, n) in other.0 {
            self.add(name, n);
        }
    }
}

/// Why nothing of a batch could be written: retry it later.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] diesel::result::Error),
    /// The database's schema is older than this worker's: its migrations have not run
    /// yet (a rolling upgrade, or a migration job still running). The messages are
    /// fine: retry them once it has.
    #[error(
        "the database schema is behind this worker: table {table} has no column {}; run this worker's migrations (start it with its migrations, or run `--migrate-only`)",
        .columns.join(", ")
    )]
    SchemaBehind {
        table: &'static str,
        columns: Vec<&'static str>,
    },
    #[error("writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Shutdown was requested and the grace period ended before the write did.
    #[error(
        "the write outlasted the shutdown grace period; it was left to the database to commit or roll back"
    )]
    Abandoned,
}

/// Writes a batch in one transaction. When it fails and the database is fine, writes
/// each message alone so only the messages whose rows the database refuses are refused.
/// `base` is the sequence base of the stream incarnation the batch comes from
/// ([`apply::sequence_base`]).
pub fn write_batch(
    conn: &mut AnyConnection,
    batch: &[Pending],
    base: i64,
) -> Result<Written, WriteError> {
    write_batch_with(conn, batch, base, Absent::Straight)
}

/// [`write_batch`], trying `absent` first (the benchmark compares the two).
pub fn write_batch_with(
    conn: &mut AnyConnection,
    batch: &[Pending],
    base: i64,
    absent: Absent,
) -> Result<Written, WriteError> {
    let committed = |done: Committed| Written {
        refused: Vec::new(),
        skipped: done.skipped,
        stale: done.stale,
        rows: done.rows,
    };
    let err = match write(conn, batch, base, absent) {
        Ok(done) => return Ok(committed(done)),
        // A straight write met a row that was there after all: the same batch again,
        // with every row upserted and its status rows claimed by upsert.
        Err(err) if absent == Absent::Straight && straight_met_a_row(conn, &err) => {
            tracing::debug!(
                table = unique_violation_table(&err).unwrap_or_default(),
                messages = batch.len(),
                "rows were there already; writing the batch again through the upsert path"
            );
            match write(conn, batch, base, Absent::Upsert) {
                Ok(done) => {
                    if let Some(table) = unique_violation_table(&err)
                        && table != status::TABLE
                    {
                        apply::straight_refused(&table);
                    }
                    return Ok(committed(done));
                }
                Err(err) => database_at_fault(conn, err, batch)?,
            }
        }
        Err(err) => database_at_fault(conn, err, batch)?,
    };
    tracing::warn!(error = %err, messages = batch.len(), "batch refused by the database; writing message by message");
    let mut written = Written::default();
    for item in batch {
        match write_alone(conn, item, base)? {
            Ok(done) => {
                written.skipped += done.skipped;
                written.stale += done.stale;
                written.rows.merge(done.rows);
            }
            Err(err) => {
                let why = super::refusal::explain(conn, &item.changes, &err);
                written.refused.push((item.index, why));
            }
        }
    }
    Ok(written)
}

/// Whether `err` is a unique violation a straight write can cause (PostgreSQL only:
/// elsewhere every write upserts).
fn straight_met_a_row(conn: &AnyConnection, err: &diesel::result::Error) -> bool {
    conn.kind() == db::DatabaseKind::Postgres && unique_violation_table(err).is_some()
}

/// The table of a unique violation (empty if the database did not say).
fn unique_violation_table(err: &diesel::result::Error) -> Option<String> {
    match err {
        diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            Some(info.table_name().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

/// Writes one message in its own transaction. Its rows are at fault only if the database
/// refuses them by a data error, or twice while taking other writes: a deadlock or a
/// lock timeout (errors without a kind of their own) passes on the second try.
fn write_alone(
    conn: &mut AnyConnection,
    item: &Pending,
    base: i64,
) -> Result<diesel::QueryResult<Committed>, WriteError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match write(conn, std::slice::from_ref(item), base, Absent::Upsert) {
            Ok(done) => return Ok(Ok(done)),
            Err(err) => database_at_fault(conn, err, std::slice::from_ref(item))?,
        };
        if db::classify(&err) == ErrorClass::Data || attempts == 2 {
            return Ok(Err(err));
        }
    }
}

/// `Err` when a failed write is the database's fault: its kind says so (a lost
/// connection, a serialization failure), the database does not take a write now, or
/// its schema lacks a table or column the batch writes (asked of the catalog).
fn database_at_fault(
    conn: &mut AnyConnection,
    err: diesel::result::Error,
    items: &[Pending],
) -> Result<diesel::result::Error, WriteError> {
    if db::is_transient(&err) || db::probe(conn).is_err() {
        return Err(WriteError::Unavailable(err));
    }
    if let Some(behind) = schema_behind(conn, items) {
        return Err(behind);
    }
    Ok(err)
}

/// The first table `items` write that lacks columns in the database, if any.
fn schema_behind(conn: &mut AnyConnection, items: &[Pending]) -> Option<WriteError> {
    let mut seen = HashSet::new();
    let tables = (items.iter())
        .flat_map(|item| &item.changes)
        .flat_map(|change| {
            std::iter::once(change.entity).chain(change.children.iter().map(|c| c.entity))
        })
        .map(|entity| &entity.table)
        .filter(|table| seen.insert(table.name));
    for table in tables.collect::<Vec<_>>() {
        match db::missing_columns(conn, table) {
            Ok(columns) if !columns.is_empty() => {
                return Some(WriteError::SchemaBehind {
                    table: table.name,
                    columns,
                });
            }
            _ => {}
        }
    }
    None
}

/// One write transaction: status rows, then the changes of the messages it claimed.
/// With [`Absent::Straight`], a batch of first deliveries claims its status rows
/// straight ([`status::claim_new`]) and new rows are written straight.
fn write(
    conn: &mut AnyConnection,
    items: &[Pending],
    base: i64,
    absent: Absent,
) -> diesel::QueryResult<Committed> {
    db::write_transaction(conn, |conn| {
        // The status rows go first and fence the changes: only messages this transaction
        // claims (not persisted before, by anyone) are applied.
        let mut seen = HashSet::with_capacity(items.len());
        let records: Vec<StatusRecord> = items
            .iter()
            .filter(|item| seen.insert(item.record.message_id))
            .map(|item| item.record.clone())
            .collect();
        let first_deliveries = records.iter().all(|r| r.attempts <= 1);
        let mut claimed = if absent == Absent::Straight && first_deliveries {
            status::claim_new(conn, &records)?
        } else {
            status::claim(conn, &records)?
        };
        let skipped = records.len() - claimed.len();
        // `remove`: a message id twice in one batch is applied once.
        let mine: Vec<&Pending> = items
            .iter()
            .filter(|item| claimed.remove(&item.record.message_id))
            .collect();
        // A message's changes share its sequence: they are one write.
        let changes: Vec<Sequenced<'_>> = mine
            .iter()
            .flat_map(|item| {
                item.changes.iter().map(|change| Sequenced {
                    seq: base + item.record.stream_sequence.unwrap_or(0),
                    message_id: item.record.message_id,
                    change,
                })
            })
            .collect();
        let applied = apply::apply(conn, &changes, absent)?;
        let mut outcomes = applied.outcomes.iter();
        let mut rows = CountsByName::default();
        let mut marks: Vec<(Uuid, MessageState, Option<String>)> = mine
            .iter()
            .filter_map(|item| {
                let outcome = message_outcome(outcomes.by_ref().take(item.changes.len()));
                if outcome == Outcome::Applied {
                    rows.add_changes(&item.changes);
                }
                (outcome != Outcome::Applied).then(|| status_of(item.record.message_id, outcome))
            })
            .collect();
        let stale = marks.len();
        // Earlier patches this batch revised: a late create under a logged patch (now
        // applied), a late delete under an applied one (now missing).
        marks.extend(
            applied
                .revised
                .iter()
                .map(|(id, outcome)| status_of(*id, *outcome)),
        );
        status::mark(conn, &marks)?;
        Ok(Committed {
            skipped,
            stale,
            rows,
        })
    })
}

/// What became of a message from what became of its changes: applied if any was (the
/// others were older than their rows, or patches of missing rows: skipped as they would
/// be alone), else its own row's outcome.
fn message_outcome<'a>(mut outcomes: impl Iterator<Item = &'a Outcome>) -> Outcome {
    let first = outcomes.next().copied().unwrap_or(Outcome::Applied);
    if first == Outcome::Applied || outcomes.any(|o| *o == Outcome::Applied) {
        Outcome::Applied
    } else {
        first
    }
}

/// The status row of a message with `outcome`.
fn status_of(id: Uuid, outcome: Outcome) -> (Uuid, MessageState, Option<String>) {
    match outcome {
        Outcome::Applied => (id, MessageState::Persisted, None),
        Outcome::Stale => (
            id,
            MessageState::SkippedStale,
            Some("skipped: its row already reflects a newer create, upsert or delete".into()),
        ),
        Outcome::Missing => (
            id,
            MessageState::SkippedMissing,
            Some("skipped: a patch of a row that does not exist".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_persisted_if_any_of_its_rows_was_written() {
        use Outcome::*;
        let of = |outcomes: &[Outcome]| message_outcome(outcomes.iter());
        assert_eq!(of(&[Applied]), Applied);
        assert_eq!(of(&[Stale, Missing, Applied]), Applied);
        assert_eq!(of(&[Stale, Missing]), Stale, "else its own row's outcome");
        assert_eq!(of(&[Missing, Stale]), Missing);
    }
}
