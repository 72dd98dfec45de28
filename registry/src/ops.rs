//! Registry operations over a [`State`]: the changes (register, delete, configure) planned as
//! log records by the writer, and the schema resolution and compatibility checks shared with
//! the read endpoints.
//!
//! `plan` only reads the state; the writer calls it on an up-to-date copy, applies the
//! records to that copy, and only then writes them (see `store`).

use apache_avro::Schema;
use serde::Deserialize;

use crate::compat::{self, Level, Previous};
use crate::error::ApiError;
use crate::record::{ConfigValue, IdFloorValue, Record, Reference, SchemaValue};
use crate::schema::{self, SchemaError};
use crate::state::{Content, State, Subject};

/// A reference as a client sends it; `version` -1 means the latest version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RefRequest {
    pub name: String,
    pub subject: String,
    pub version: i64,
}

/// A schema from a request body, its type already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchema {
    pub schema: String,
    pub references: Vec<RefRequest>,
}

/// A version as written in a URL: a number or `latest` (also `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text.eq_ignore_ascii_case("latest") || text == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match text.parse::<i64>() {
            Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) => Ok(VersionSpec::Number(n as u32)),
            _ => Err(ApiError::invalid_version(text)),
        }
    }

    /// The version of `subject` this names. `deleted` lets soft-deleted versions count.
    pub fn resolve(self, subject: &Subject, deleted: bool) -> Result<u32, ApiError> {
        match self {
            VersionSpec::Latest => {
                let latest = if deleted {
                    subject.latest_any()
                } else {
                    subject.latest_live()
                };
                // Confluent answers "Version -1 not found." here; say "latest" instead.
                latest.map(|(n, _)| n).ok_or_else(|| {
                    ApiError::new(
                        axum::http::StatusCode::NOT_FOUND,
                        crate::error::code::VERSION_NOT_FOUND,
                        "Version latest not found.",
                    )
                })
            }
            VersionSpec::Number(n) => match subject.versions.get(&n) {
                Some(v) if deleted || !v.deleted => Ok(n),
                _ => Err(ApiError::version_not_found(n)),
            },
        }
    }
}

/// A change to the registry, carried out by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Register {
        subject: String,
        schema: NewSchema,
    },
    DeleteSubject {
        subject: String,
        permanent: bool,
    },
    DeleteVersion {
        subject: String,
        version: VersionSpec,
        permanent: bool,
    },
    SetConfig {
        subject: Option<String>,
        level: Level,
    },
    DeleteConfig {
        subject: Option<String>,
    },
    /// Changes nothing: returns once this instance has read everything committed to the log
    /// so far (used at start-up).
    Sync,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Register { .. } => "register",
            Command::DeleteSubject { .. } => "delete_subject",
            Command::DeleteVersion { .. } => "delete_version",
            Command::SetConfig { .. } => "set_config",
            Command::DeleteConfig { .. } => "delete_config",
            Command::Sync => "sync",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered { id: u32, version: u32, new: bool },
    DeletedVersions(Vec<u32>),
    DeletedVersion(u32),
    Config(Level),
    Synced,
}

/// The records a command writes and what to answer once they are applied.
#[derive(Debug)]
pub struct Planned {
    pub records: Vec<Record>,
    pub outcome: Outcome,
}

pub fn plan(state: &State, command: &Command) -> Result<Planned, ApiError> {
    match command {
        Command::Register { subject, schema } => plan_register(state, subject, schema),
        Command::DeleteSubject { subject, permanent } => {
            plan_delete_subject(state, subject, *permanent)
        }
        Command::DeleteVersion {
            subject,
            version,
            permanent,
        } => plan_delete_version(state, subject, *version, *permanent),
        Command::SetConfig { subject, level } => Ok(Planned {
            records: vec![Record::Config {
                subject: subject.clone(),
                value: Some(ConfigValue {
                    compatibility_level: Some(*level),
                }),
            }],
            outcome: Outcome::Config(*level),
        }),
        Command::DeleteConfig { subject } => {
            let previous = match subject {
                Some(s) => state
                    .subject_level(s)
                    .ok_or_else(|| ApiError::subject_compatibility_not_configured(s))?,
                None => state.global_level().unwrap_or(compat::DEFAULT_LEVEL),
            };
            Ok(Planned {
                records: vec![Record::Config {
                    subject: subject.clone(),
                    value: None,
                }],
                outcome: Outcome::Config(previous),
            })
        }
        // Nothing to write: the writer only plans once its state holds everything committed
        // before its producer epoch (see `store`), which is what a sync asks for.
        Command::Sync => Ok(Planned {
            records: vec![],
            outcome: Outcome::Synced,
        }),
    }
}

fn plan_register(state: &State, subject: &str, new: &NewSchema) -> Result<Planned, ApiError> {
    let references = resolve_references(state, &new.references)?;
    let parsed = parse_new(state, &new.schema, &references)?;
    let content = Content::new(schema::AVRO, &new.schema, &references);
    if let Some((version, v)) = state.find_in_subject(subject, &content, false) {
        return Ok(Planned {
            records: vec![],
            outcome: Outcome::Registered {
                id: v.id,
                version,
                new: false,
            },
        });
    }
    let messages = check_level(state, subject, &parsed, None)?;
    if !messages.is_empty() {
        return Err(ApiError::incompatible(subject, &messages));
    }
    // An id already bound to this content is reused with its stored text, so the new record
    // binds exactly what the id already means.
    let (id, text) = match state.id_for(&content).and_then(|id| state.schema(id)) {
        Some(entry) => (entry.schema.id, entry.schema.schema.clone()),
        None => (state.max_id() + 1, schema::minify(&new.schema)),
    };
    let version = state.subject(subject).map_or(1, Subject::next_version);
    Ok(Planned {
        records: vec![Record::Schema {
            subject: subject.to_owned(),
            version,
            value: Some(SchemaValue {
                subject: subject.to_owned(),
                version,
                id,
                schema_type: None,
                references,
                schema: text,
                deleted: false,
            }),
        }],
        outcome: Outcome::Registered {
            id,
            version,
            new: true,
        },
    })
}

fn plan_delete_subject(state: &State, subject: &str, permanent: bool) -> Result<Planned, ApiError> {
    let s = state
        .subject(subject)
        .ok_or_else(|| ApiError::subject_not_found(subject))?;
    let live: Vec<u32> = s.live().map(|(n, _)| n).collect();
    if permanent && !live.is_empty() {
        return Err(ApiError::subject_not_soft_deleted(subject));
    }
    if !permanent && live.is_empty() {
        return Err(ApiError::subject_soft_deleted(subject));
    }
    let targets: Vec<u32> = if permanent {
        s.versions.keys().copied().collect()
    } else {
        live
    };
    for &version in &targets {
        check_unreferenced(state, subject, version)?;
    }
    let mut records: Vec<Record> = targets
        .iter()
        .map(|&version| version_record(state, subject, version, permanent))
        .collect();
    if permanent {
        records.push(id_floor(state));
    }
    Ok(Planned {
        records,
        outcome: Outcome::DeletedVersions(targets),
    })
}

fn plan_delete_version(
    state: &State,
    subject: &str,
    version: VersionSpec,
    permanent: bool,
) -> Result<Planned, ApiError> {
    let s = state
        .subject(subject)
        .ok_or_else(|| ApiError::subject_not_found(subject))?;
    // A numbered version may already be soft-deleted (that is answered with 40406, or is
    // what a permanent delete needs); `latest` means the latest live version for a soft
    // delete and the latest of all for a permanent one.
    let n = version.resolve(s, permanent || version != VersionSpec::Latest)?;
    let deleted = s.versions[&n].deleted;
    if !permanent && deleted {
        return Err(ApiError::version_soft_deleted(subject, n));
    }
    if permanent && !deleted {
        return Err(ApiError::version_not_soft_deleted(subject, n));
    }
    check_unreferenced(state, subject, n)?;
    let mut records = vec![version_record(state, subject, n, permanent)];
    if permanent {
        records.push(id_floor(state));
    }
    Ok(Planned {
        records,
        outcome: Outcome::DeletedVersion(n),
    })
}

/// The record that soft-deletes (same key, `deleted: true`) or permanently deletes
/// (tombstone) one existing version.
fn version_record(state: &State, subject: &str, version: u32, permanent: bool) -> Record {
    let value = (!permanent).then(|| {
        let v = state
            .subject(subject)
            .expect("planned on this state")
            .versions[&version];
        let stored = &state
            .schema(v.id)
            .expect("versions point at bound ids")
            .schema;
        SchemaValue {
            subject: subject.to_owned(),
            version,
            id: v.id,
            schema_type: stored.served_type().map(str::to_owned),
            references: stored.references.clone(),
            schema: stored.schema.clone(),
            deleted: true,
        }
    });
    Record::Schema {
        subject: subject.to_owned(),
        version,
        value,
    }
}

fn id_floor(state: &State) -> Record {
    Record::IdFloor(Some(IdFloorValue {
        max_id: state.max_id(),
    }))
}

fn check_unreferenced(state: &State, subject: &str, version: u32) -> Result<(), ApiError> {
    let by = state.referenced_by(subject, version);
    if by.is_empty() {
        Ok(())
    } else {
        Err(ApiError::reference_exists(subject, version, &by))
    }
}

// ---- resolution and checks shared with the read endpoints ----

/// Resolves `-1` to the latest version and checks that every referenced version exists.
pub fn resolve_references(
    state: &State,
    references: &[RefRequest],
) -> Result<Vec<Reference>, ApiError> {
    references
        .iter()
        .map(|r| {
            let missing = || {
                ApiError::invalid_schema(format!(
                    "reference '{}' names subject '{}' version {}, which does not exist",
                    r.name, r.subject, r.version
                ))
            };
            let subject = state.subject(&r.subject).ok_or_else(missing)?;
            let version = match r.version {
                -1 => subject.latest_live().map(|(n, _)| n).ok_or_else(missing)?,
                n => u32::try_from(n)
                    .ok()
                    .filter(|n| subject.versions.get(n).is_some_and(|v| !v.deleted))
                    .ok_or_else(missing)?,
            };
            Ok(Reference {
                name: r.name.clone(),
                subject: r.subject.clone(),
                version,
            })
        })
        .collect()
}

/// The texts of the referenced schemas and of everything they reference in turn, each once.
fn reference_texts(state: &State, references: &[Reference]) -> Result<Vec<String>, ApiError> {
    fn visit(
        state: &State,
        references: &[Reference],
        seen: &mut Vec<(String, u32)>,
        out: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        for r in references {
            let key = (r.subject.clone(), r.version);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let stored = state
                .subject(&r.subject)
                .and_then(|s| s.versions.get(&r.version))
                .and_then(|v| state.schema(v.id))
                .ok_or_else(|| {
                    ApiError::invalid_schema(format!(
                        "referenced subject '{}' version {} does not exist",
                        r.subject, r.version
                    ))
                })?;
            visit(state, &stored.schema.references, seen, out)?;
            out.push(stored.schema.schema.clone());
        }
        Ok(())
    }
    let mut out = Vec::new();
    visit(state, references, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Parses a schema from a request (42201 with the reason when it is not valid).
pub fn parse_new(state: &State, text: &str, references: &[Reference]) -> Result<Schema, ApiError> {
    let texts = reference_texts(state, references)?;
    schema::parse_avro(text, &texts).map_err(ApiError::invalid_schema)
}

/// Parses the schema stored under `id`.
fn parse_stored(state: &State, id: u32) -> Result<Schema, String> {
    let entry = state
        .schema(id)
        .ok_or_else(|| format!("schema id {id} is gone"))?;
    if entry.schema.schema_type != schema::AVRO {
        return Err(format!(
            "{} schemas cannot be checked",
            entry.schema.schema_type
        ));
    }
    let texts = reference_texts(state, &entry.schema.references).map_err(|e| e.message.clone())?;
    schema::parse_avro(&entry.schema.schema, &texts).map_err(|e: SchemaError| e.to_string())
}

/// Checks `new` against `subject` under its effective level: against `only` if given,
/// else the latest live version, or every live version for transitive levels. Returns what
/// breaks (empty when compatible).
pub fn check_level(
    state: &State,
    subject: &str,
    new: &Schema,
    only: Option<u32>,
) -> Result<Vec<String>, ApiError> {
    let level = state.effective_level(subject);
    let Some(s) = state.subject(subject) else {
        return Ok(Vec::new());
    };
    if level == Level::None {
        return Ok(Vec::new());
    }
    let versions: Vec<(u32, u32)> = match only {
        Some(n) => s.versions.get(&n).map(|v| (n, v.id)).into_iter().collect(),
        None if level.is_transitive() => s.live().map(|(n, v)| (n, v.id)).collect(),
        None => s
            .latest_live()
            .map(|(n, v)| (n, v.id))
            .into_iter()
            .collect(),
    };
    let mut parsed = Vec::with_capacity(versions.len());
    let mut messages = Vec::new();
    for (version, id) in versions {
        match parse_stored(state, id) {
            Ok(schema) => parsed.push((version, schema)),
            Err(e) => messages.push(format!(
                "UNREADABLE_OLD_SCHEMA: version {version} cannot be parsed to check against: {e}"
            )),
        }
    }
    let previous: Vec<Previous<'_>> = parsed
        .iter()
        .map(|(version, schema)| Previous {
            version: *version,
            schema,
        })
        .collect();
    messages.extend(compat::check(level, new, &previous));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"}]}"#;

    fn register(state: &mut State, subject: &str, schema: &str) -> Result<Outcome, ApiError> {
        let planned = plan(
            state,
            &Command::Register {
                subject: subject.into(),
                schema: NewSchema {
                    schema: schema.into(),
                    references: vec![],
                },
            },
        )?;
        for r in &planned.records {
            state.apply(r).unwrap();
        }
        Ok(planned.outcome)
    }

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(VersionSpec::parse("latest").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("-1").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("7").unwrap(), VersionSpec::Number(7));
        for bad in ["0", "-2", "abc", "2147483648", ""] {
            assert_eq!(VersionSpec::parse(bad).unwrap_err().code, 42202, "{bad}");
        }
    }

    #[test]
    fn registration_reuses_ids_and_versions() {
        let mut state = State::default();
        let first = register(&mut state, "a", V1).unwrap();
        assert_eq!(
            first,
            Outcome::Registered {
                id: 1,
                version: 1,
                new: true
            }
        );
        let spaced = V1.replace(',', " ,\n ");
        assert_eq!(
            register(&mut state, "a", &spaced).unwrap(),
            Outcome::Registered {
                id: 1,
                version: 1,
                new: false
            }
        );
        assert_eq!(
            register(&mut state, "b", V1).unwrap(),
            Outcome::Registered {
                id: 1,
                version: 1,
                new: true
            }
        );
    }

    #[test]
    fn deletes_follow_confluents_rules() {
        let mut state = State::default();
        register(&mut state, "a", V1).unwrap();
        let delete = |state: &State, permanent| {
            plan(
                state,
                &Command::DeleteVersion {
                    subject: "a".into(),
                    version: VersionSpec::Number(1),
                    permanent,
                },
            )
        };
        assert_eq!(delete(&state, true).unwrap_err().code, 40407);
        for r in delete(&state, false).unwrap().records {
            state.apply(&r).unwrap();
        }
        assert_eq!(delete(&state, false).unwrap_err().code, 40406);
        let planned = delete(&state, true).unwrap();
        assert!(matches!(planned.records.last(), Some(Record::IdFloor(_))));
        for r in planned.records {
            state.apply(&r).unwrap();
        }
        assert!(state.subject("a").is_none());
        // The id is never handed out again.
        let v2 = V1.replace("User", "Other");
        assert!(matches!(
            register(&mut state, "a", &v2).unwrap(),
            Outcome::Registered {
                id: 2,
                version: 1,
                ..
            }
        ));
    }
}
