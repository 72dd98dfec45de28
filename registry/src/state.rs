//! The in-memory model every instance rebuilds from the `_schemas` log, and `apply`, the one
//! function that changes it.
//!
//! `apply` is deterministic and depends only on the state and the record (no clock, no
//! parsing against other records, no I/O), so every instance that reads the same log ends in
//! the same state. It also arbitrates: a SCHEMA record that would bind an id to a second,
//! different schema, or fill a subject/version slot already holding another id, loses to the
//! record that came first in the log and is ignored by everyone alike. The writer makes such
//! losers impossible for feedline's own instances (see `store`), so this is the safety net
//! for any other writer of the topic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use serde::Serialize;

use crate::compat::{DEFAULT_LEVEL, Level};
use crate::record::{Record, Reference, SchemaValue};
use crate::schema;

/// What makes two registrations the same schema: type, canonical text and references.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Content {
    pub schema_type: String,
    pub canonical: String,
    pub references: Vec<Reference>,
}

impl Content {
    pub fn new(schema_type: &str, text: &str, references: &[Reference]) -> Self {
        Content {
            schema_type: schema_type.to_ascii_uppercase(),
            canonical: schema::canonical(text),
            references: references.to_vec(),
        }
    }
}

/// A schema bound to a global id. Immutable once bound, so it is shared by `Arc`.
#[derive(Debug)]
pub struct StoredSchema {
    pub id: u32,
    pub schema_type: String,
    /// The text as first registered (minified), served back unchanged.
    pub schema: String,
    pub references: Vec<Reference>,
    pub content: Content,
    /// The body of `GET /schemas/ids/{id}`, rendered once: that lookup is the hot path of
    /// every consumer with a cold cache.
    pub by_id_body: Bytes,
}

/// The body of `GET /schemas/ids/{id}` (and the schema part of other answers).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody<'a> {
    schema: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Reference]>::is_empty")]
    references: &'a [Reference],
}

impl StoredSchema {
    fn new(value: &SchemaValue, content: Content) -> Self {
        let schema_type = value.schema_type().to_ascii_uppercase();
        let by_id_body = serde_json::to_vec(&SchemaBody {
            schema: &value.schema,
            schema_type: (schema_type != schema::AVRO).then_some(schema_type.as_str()),
            references: &value.references,
        })
        .expect("schema body serializes");
        StoredSchema {
            id: value.id,
            schema: value.schema.clone(),
            references: value.references.clone(),
            content,
            by_id_body: Bytes::from(by_id_body),
            schema_type,
        }
    }

    /// `schemaType` as Confluent serves it: only when not AVRO.
    pub fn served_type(&self) -> Option<&str> {
        (self.schema_type != schema::AVRO).then_some(self.schema_type.as_str())
    }
}

/// An id and the subject versions that use it.
#[derive(Debug, Clone)]
pub struct IdEntry {
    pub schema: Arc<StoredSchema>,
    pub usages: BTreeSet<(String, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub id: u32,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// Soft-deleted versions stay here (flagged) until permanently deleted.
    pub versions: BTreeMap<u32, Version>,
}

impl Subject {
    pub fn live(&self) -> impl DoubleEndedIterator<Item = (u32, Version)> + '_ {
        self.versions
            .iter()
            .filter(|(_, v)| !v.deleted)
            .map(|(n, v)| (*n, *v))
    }

    pub fn is_live(&self) -> bool {
        self.live().next().is_some()
    }

    pub fn latest_live(&self) -> Option<(u32, Version)> {
        self.live().next_back()
    }

    pub fn latest_any(&self) -> Option<(u32, Version)> {
        self.versions.iter().next_back().map(|(n, v)| (*n, *v))
    }

    /// The next version number: after every version still known, deleted or not.
    pub fn next_version(&self) -> u32 {
        self.latest_any().map_or(1, |(n, _)| n + 1)
    }
}

/// Why `apply` ignored a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("key {subject}/{key_version} carries a value for {value_subject}/{value_version}")]
    KeyMismatch {
        subject: String,
        key_version: u32,
        value_subject: String,
        value_version: u32,
    },
    #[error("id {0} is not a valid schema id")]
    InvalidId(u32),
    #[error("id {id} is already bound to a different schema")]
    IdTaken { id: u32 },
    #[error("{subject} version {version} already holds schema id {existing}, not {id}")]
    VersionTaken {
        subject: String,
        version: u32,
        existing: u32,
        id: u32,
    },
}

#[derive(Debug, Clone, Default)]
pub struct State {
    schemas: HashMap<u32, IdEntry>,
    /// The first id bound to each content: what a new registration of that content reuses.
    by_content: HashMap<Content, u32>,
    subjects: BTreeMap<String, Subject>,
    /// Subject-level compatibility; kept apart from `subjects` because Confluent lets a
    /// subject be configured before it has versions and keeps it after they are deleted.
    configs: BTreeMap<String, Level>,
    global: Option<Level>,
    /// The highest id ever seen; never goes down, so deleted ids are never handed out again.
    max_id: u32,
}

impl State {
    /// Applies one record of the log. `Err` means the record lost to an earlier one and
    /// changed nothing.
    pub fn apply(&mut self, record: &Record) -> Result<(), Conflict> {
        match record {
            Record::Schema {
                subject,
                version,
                value: Some(value),
            } => self.put_version(subject, *version, value),
            Record::Schema {
                subject,
                version,
                value: None,
            } => {
                self.remove_version(subject, *version);
                Ok(())
            }
            Record::Config { subject, value } => {
                let level = value.as_ref().and_then(|v| v.compatibility_level);
                match (subject, level) {
                    (None, level) => self.global = level,
                    (Some(s), Some(level)) => {
                        self.configs.insert(s.clone(), level);
                    }
                    (Some(s), None) => {
                        self.configs.remove(s);
                    }
                }
                Ok(())
            }
            Record::DeleteSubject {
                subject,
                value: Some(value),
            } => {
                if let Some(s) = self.subjects.get_mut(subject) {
                    for (_, v) in s.versions.range_mut(..=value.version) {
                        v.deleted = true;
                    }
                }
                Ok(())
            }
            Record::IdFloor(Some(floor)) => {
                self.max_id = self.max_id.max(floor.max_id);
                Ok(())
            }
            Record::DeleteSubject { value: None, .. }
            | Record::IdFloor(None)
            | Record::Noop
            | Record::Other(_) => Ok(()),
        }
    }

    fn put_version(
        &mut self,
        subject: &str,
        version: u32,
        value: &SchemaValue,
    ) -> Result<(), Conflict> {
        if value.subject != subject || value.version != version {
            return Err(Conflict::KeyMismatch {
                subject: subject.to_owned(),
                key_version: version,
                value_subject: value.subject.clone(),
                value_version: value.version,
            });
        }
        if value.id == 0 || version == 0 {
            return Err(Conflict::InvalidId(value.id));
        }
        let content = Content::new(value.schema_type(), &value.schema, &value.references);
        if let Some(entry) = self.schemas.get(&value.id)
            && entry.schema.content != content
        {
            return Err(Conflict::IdTaken { id: value.id });
        }
        if let Some(existing) = self
            .subjects
            .get_mut(subject)
            .and_then(|s| s.versions.get_mut(&version))
        {
            if existing.id != value.id {
                return Err(Conflict::VersionTaken {
                    subject: subject.to_owned(),
                    version,
                    existing: existing.id,
                    id: value.id,
                });
            }
            // The same version again: only the deleted flag can change (a soft delete).
            existing.deleted = value.deleted;
            return Ok(());
        }
        let entry = self.schemas.entry(value.id).or_insert_with(|| IdEntry {
            schema: Arc::new(StoredSchema::new(value, content.clone())),
            usages: BTreeSet::new(),
        });
        entry.usages.insert((subject.to_owned(), version));
        self.by_content.entry(content).or_insert(value.id);
        self.subjects
            .entry(subject.to_owned())
            .or_default()
            .versions
            .insert(
                version,
                Version {
                    id: value.id,
                    deleted: value.deleted,
                },
            );
        self.max_id = self.max_id.max(value.id);
        Ok(())
    }

    fn remove_version(&mut self, subject: &str, version: u32) {
        let Some(s) = self.subjects.get_mut(subject) else {
            return;
        };
        let Some(removed) = s.versions.remove(&version) else {
            return;
        };
        if s.versions.is_empty() {
            self.subjects.remove(subject);
        }
        if let Some(entry) = self.schemas.get_mut(&removed.id) {
            entry.usages.remove(&(subject.to_owned(), version));
            if entry.usages.is_empty() {
                let content = entry.schema.content.clone();
                self.schemas.remove(&removed.id);
                if self.by_content.get(&content) == Some(&removed.id) {
                    self.by_content.remove(&content);
                }
            }
        }
    }

    // ---- queries ----

    pub fn schema(&self, id: u32) -> Option<&IdEntry> {
        self.schemas.get(&id)
    }

    pub fn id_for(&self, content: &Content) -> Option<u32> {
        self.by_content.get(content).copied()
    }

    pub fn subject(&self, subject: &str) -> Option<&Subject> {
        self.subjects.get(subject)
    }

    /// A subject that has versions to show: live ones, or any when `deleted` is asked for.
    pub fn visible_subject(&self, subject: &str, deleted: bool) -> Option<&Subject> {
        self.subjects
            .get(subject)
            .filter(|s| deleted || s.is_live())
    }

    pub fn subjects(&self) -> impl Iterator<Item = (&String, &Subject)> {
        self.subjects.iter()
    }

    pub fn schema_count(&self) -> usize {
        self.schemas.len()
    }

    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    pub fn global_level(&self) -> Option<Level> {
        self.global
    }

    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.configs.get(subject).copied()
    }

    /// The level that applies to `subject`: its own, else the global one, else BACKWARD.
    pub fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject)
            .or(self.global)
            .unwrap_or(DEFAULT_LEVEL)
    }

    /// The version of `subject` holding `content`, newest first; live ones only unless
    /// `deleted`.
    pub fn find_in_subject(
        &self,
        subject: &str,
        content: &Content,
        deleted: bool,
    ) -> Option<(u32, Version)> {
        self.subjects
            .get(subject)?
            .versions
            .iter()
            .rev()
            .find_map(|(n, v)| {
                let same = self
                    .schemas
                    .get(&v.id)
                    .is_some_and(|e| e.schema.content == *content);
                (same && (deleted || !v.deleted)).then_some((*n, *v))
            })
    }

    /// Ids of live schemas that reference `subject` version `version`.
    pub fn referenced_by(&self, subject: &str, version: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .schemas
            .values()
            .filter(|e| {
                e.schema
                    .references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version)
                    && e.usages.iter().any(|(s, n)| {
                        self.subjects
                            .get(s)
                            .and_then(|s| s.versions.get(n))
                            .is_some_and(|v| !v.deleted)
                    })
            })
            .map(|e| e.schema.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Everything that defines the state, for tests that compare two instances.
    pub fn fingerprint(&self) -> String {
        let mut ids: Vec<_> = self
            .schemas
            .iter()
            .map(|(id, e)| (*id, e.schema.schema.clone(), e.usages.clone()))
            .collect();
        ids.sort();
        format!(
            "ids={ids:?}\nsubjects={:?}\nconfigs={:?}\nglobal={:?}\nmax_id={}",
            self.subjects, self.configs, self.global, self.max_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ConfigValue, IdFloorValue};

    fn put(subject: &str, version: u32, id: u32, schema: &str) -> Record {
        Record::Schema {
            subject: subject.into(),
            version,
            value: Some(SchemaValue {
                subject: subject.into(),
                version,
                id,
                schema_type: None,
                references: vec![],
                schema: schema.into(),
                deleted: false,
            }),
        }
    }

    fn tombstone(subject: &str, version: u32) -> Record {
        Record::Schema {
            subject: subject.into(),
            version,
            value: None,
        }
    }

    #[test]
    fn the_first_record_wins_an_id_and_a_version() {
        let mut state = State::default();
        state.apply(&put("a", 1, 1, r#""string""#)).unwrap();
        // Another schema claiming id 1 loses.
        assert_eq!(
            state.apply(&put("b", 1, 1, r#""long""#)),
            Err(Conflict::IdTaken { id: 1 })
        );
        assert!(state.subject("b").is_none());
        // Another id claiming a/1 loses.
        assert!(matches!(
            state.apply(&put("a", 1, 2, r#""long""#)),
            Err(Conflict::VersionTaken { .. })
        ));
        // The same schema under another subject shares the id.
        state.apply(&put("b", 1, 1, r#" "string" "#)).unwrap();
        assert_eq!(state.schema(1).unwrap().usages.len(), 2);
    }

    #[test]
    fn replaying_the_same_log_gives_the_same_state() {
        let log = vec![
            put("a", 1, 1, r#""string""#),
            put("b", 1, 1, r#""long""#),
            put("a", 2, 2, r#""long""#),
            Record::Config {
                subject: Some("a".into()),
                value: Some(ConfigValue {
                    compatibility_level: Some(Level::Full),
                }),
            },
            tombstone("a", 1),
        ];
        let replay = || {
            let mut s = State::default();
            for r in &log {
                let _ = s.apply(r);
            }
            s.fingerprint()
        };
        assert_eq!(replay(), replay());
    }

    #[test]
    fn permanent_deletes_keep_the_id_floor() {
        let mut state = State::default();
        state.apply(&put("a", 1, 5, r#""string""#)).unwrap();
        state.apply(&tombstone("a", 1)).unwrap();
        assert!(state.schema(5).is_none());
        assert!(state.subject("a").is_none());
        assert_eq!(state.max_id(), 5);
        // After compaction only the floor record is left to tell.
        let mut rebuilt = State::default();
        rebuilt
            .apply(&Record::IdFloor(Some(IdFloorValue { max_id: 5 })))
            .unwrap();
        assert_eq!(rebuilt.max_id(), 5);
    }

    #[test]
    fn levels_fall_back_to_global_then_backward() {
        let mut state = State::default();
        assert_eq!(state.effective_level("s"), Level::Backward);
        let config = |subject: Option<&str>, level| Record::Config {
            subject: subject.map(Into::into),
            value: Some(ConfigValue {
                compatibility_level: Some(level),
            }),
        };
        state.apply(&config(None, Level::Forward)).unwrap();
        assert_eq!(state.effective_level("s"), Level::Forward);
        state.apply(&config(Some("s"), Level::None)).unwrap();
        assert_eq!(state.effective_level("s"), Level::None);
        assert_eq!(state.effective_level("t"), Level::Forward);
    }
}
