//! Error classes, in one place: every handler failure is transient (a dependency is away;
//! retry for as long as it takes), permanent for one message (the data can never be
//! processed; dead-letter it and go on) or unknown (retry a few times, then find the message
//! that fails and dead-letter it). The consumer runtime acts on the class
//! ([`crate::HandlerError`]); the rules that decide it live here.

use rdkafka::error::KafkaError;

use crate::admin::AdminError;
use crate::codec::CodecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A connection, a pool, the broker or the registry is away, or the database asked for
    /// a retry (serialization failure, deadlock): the same work succeeds later.
    Transient,
    /// The data itself is at fault (a data exception, an integrity violation, bytes that do
    /// not decode, a schema the registry does not know): retrying cannot help.
    Permanent,
    /// Anything else: retried a bounded number of times, then treated as permanent for the
    /// message that still fails on its own.
    Unknown,
}

/// An error that knows its class.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

impl Classify for sqlx::Error {
    fn class(&self) -> ErrorClass {
        match self {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => ErrorClass::Transient,
            sqlx::Error::Database(db) => match db.code() {
                // SQLite reports its extended result code, as a number.
                Some(code) if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => {
                    sqlite_class(&code)
                }
                Some(code) => sqlstate_class(&code),
                None => ErrorClass::Unknown,
            },
            _ => ErrorClass::Unknown,
        }
    }
}

/// The class of a PostgreSQL SQLSTATE.
pub fn sqlstate_class(code: &str) -> ErrorClass {
    match code {
        // Serialization failure, deadlock, lock not available.
        "40001" | "40P01" | "55P03" => ErrorClass::Transient,
        // Admin shutdown, crash shutdown, cannot connect now: the server is restarting.
        "57P01" | "57P02" | "57P03" => ErrorClass::Transient,
        // "Database is not currently accepting connections" (closed for maintenance); none
        // of the services' statements can raise it otherwise.
        "55000" => ErrorClass::Transient,
        _ => match &code[..code.len().min(2)] {
            // Connection exceptions; insufficient resources (too many connections, disk full).
            "08" | "53" => ErrorClass::Transient,
            // Data exception; integrity constraint violation.
            "22" | "23" => ErrorClass::Permanent,
            _ => ErrorClass::Unknown,
        },
    }
}

/// The class of a SQLite result code (primary or extended: the primary is its low byte).
pub fn sqlite_class(code: &str) -> ErrorClass {
    let Ok(code) = code.parse::<u32>() else {
        return ErrorClass::Unknown;
    };
    match code & 0xff {
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN.
        5 | 6 | 10 | 13 | 14 => ErrorClass::Transient,
        // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE.
        18 | 19 | 20 | 25 => ErrorClass::Permanent,
        _ => ErrorClass::Unknown,
    }
}

impl Classify for sqlx::migrate::MigrateError {
    fn class(&self) -> ErrorClass {
        match self {
            sqlx::migrate::MigrateError::Execute(e) => e.class(),
            _ => ErrorClass::Unknown,
        }
    }
}

impl Classify for AdminError {
    fn class(&self) -> ErrorClass {
        let code = match self {
            AdminError::Client(e) => e.rdkafka_error_code(),
            AdminError::CreateTopic { code, .. }
            | AdminError::DeleteTopic { code, .. }
            | AdminError::DescribeTopic { code, .. } => Some(*code),
        };
        match code {
            Some(code) if crate::producer::is_retryable(&KafkaError::AdminOp(code)) => {
                ErrorClass::Transient
            }
            // The admin client's own calls time out or find no broker while Kafka is away.
            None if matches!(self, AdminError::Client(_)) => ErrorClass::Transient,
            _ => ErrorClass::Unknown,
        }
    }
}

impl Classify for CodecError {
    fn class(&self) -> ErrorClass {
        if self.is_poison() {
            return ErrorClass::Permanent;
        }
        match self {
            // Only a schema the registry says it does not know (40403, `UnknownSchemaId`,
            // which is poison) is the data's fault; every other registry failure is the
            // registry's.
            CodecError::RegistryUnavailable { .. } | CodecError::Registry { .. } => {
                ErrorClass::Transient
            }
            _ => ErrorClass::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classed_by_code_and_class() {
        for transient in ["40001", "40P01", "57P01", "08006", "08001", "53300"] {
            assert_eq!(
                sqlstate_class(transient),
                ErrorClass::Transient,
                "{transient}"
            );
        }
        // 22021: invalid byte sequence (a NUL in a text column), 23505: unique violation.
        for permanent in ["22021", "22003", "23505", "23503"] {
            assert_eq!(
                sqlstate_class(permanent),
                ErrorClass::Permanent,
                "{permanent}"
            );
        }
        for unknown in ["42P01", "XX000", "P0001"] {
            assert_eq!(sqlstate_class(unknown), ErrorClass::Unknown, "{unknown}");
        }
    }

    #[test]
    fn sqlite_codes_use_the_primary_code() {
        // 2067: SQLITE_CONSTRAINT_UNIQUE; 517: SQLITE_BUSY_SNAPSHOT.
        assert_eq!(sqlite_class("2067"), ErrorClass::Permanent);
        assert_eq!(sqlite_class("517"), ErrorClass::Transient);
        assert_eq!(sqlite_class("1"), ErrorClass::Unknown);
    }

    #[test]
    fn connection_failures_are_transient() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.class(), ErrorClass::Transient);
        assert_eq!(sqlx::Error::PoolTimedOut.class(), ErrorClass::Transient);
        assert_eq!(sqlx::Error::RowNotFound.class(), ErrorClass::Unknown);
    }

    #[test]
    fn only_an_unknown_schema_is_the_datas_fault() {
        assert_eq!(
            CodecError::UnknownSchemaId(7).class(),
            ErrorClass::Permanent
        );
        assert_eq!(CodecError::BadMagic(1).class(), ErrorClass::Permanent);
        let away = CodecError::RegistryUnavailable {
            url: "http://registry".into(),
            reason: "refused".into(),
        };
        assert_eq!(away.class(), ErrorClass::Transient);
        let refused = CodecError::Registry {
            status: 500,
            message: "boom".into(),
        };
        assert_eq!(refused.class(), ErrorClass::Transient);
        assert_eq!(CodecError::Encode("x".into()).class(), ErrorClass::Unknown);
    }
}
