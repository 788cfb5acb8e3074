//! Which database a `DATABASE_URL` names.

use super::DatabaseKind;

/// A `DATABASE_URL` understood by nomnom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub kind: DatabaseKind,
    /// What the Diesel connection is established with (for SQLite, a path or `file:` URI).
    pub connection_string: String,
}

/// Why a database URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unsupported DATABASE_URL {0:?}: use postgres://user:password@host/db, sqlite://path/to/file.db, or a file path ending in .db/.sqlite"
)]
pub struct DatabaseUrlError(String);

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, DatabaseUrlError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self {
                kind: DatabaseKind::Postgres,
                connection_string: url.to_owned(),
            });
        }
        let sqlite = |path: &str| {
            Ok(Self {
                kind: DatabaseKind::Sqlite,
                connection_string: path.to_owned(),
            })
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(DatabaseUrlError(url.to_owned()));
            }
            return sqlite(path);
        }
        if url.starts_with("file:")
            || url == ":memory:"
            || [".db", ".sqlite", ".sqlite3"]
                .iter()
                .any(|ext| url.ends_with(ext))
        {
            return sqlite(url);
        }
        Err(DatabaseUrlError(url.to_owned()))
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        redact_password(&self.connection_string)
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_backends() {
        let pg = DatabaseUrl::parse("postgres://u:p@localhost/db").unwrap();
        assert_eq!(pg.kind, DatabaseKind::Postgres);
        assert_eq!(pg.redacted(), "postgres://u:***@localhost/db");
        let lite = DatabaseUrl::parse("sqlite://data/nomnom.db").unwrap();
        assert_eq!(lite.kind, DatabaseKind::Sqlite);
        assert_eq!(lite.connection_string, "data/nomnom.db");
        assert_eq!(
            DatabaseUrl::parse("nomnom.sqlite").unwrap().kind,
            DatabaseKind::Sqlite
        );
        assert!(
            DatabaseUrl::parse("mysql://x")
                .unwrap_err()
                .to_string()
                .contains("use postgres://")
        );
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}
