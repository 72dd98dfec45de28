//! The records of the `_schemas` topic, in Confluent's layout so the topic reads the same to
//! Confluent tooling: JSON keys such as `{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}`
//! and JSON values; a null value (tombstone) deletes the key.
//!
//! Keys are serialized from structs, never from maps, so their bytes are identical on every
//! instance: compaction keeps the last record *per key bytes*, and a key written with its
//! fields in another order would be a different key.

use serde::{Deserialize, Serialize};

use crate::compat::Level;

/// A schema reference as stored and as served: `{"name", "subject", "version"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

/// The value of a `SCHEMA` key: one version of one subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    /// Absent for AVRO, as Confluent writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
}

impl SchemaValue {
    pub fn schema_type(&self) -> &str {
        self.schema_type.as_deref().unwrap_or(crate::schema::AVRO)
    }
}

/// The value of a `CONFIG` key. Newer Confluent versions add more fields (normalize, alias,
/// ...); they are ignored, and a config without a compatibility level counts as none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    #[serde(default)]
    pub compatibility_level: Option<Level>,
}

/// The value of a `DELETE_SUBJECT` key, as Confluent writes it on a soft subject delete:
/// every version up to `version` is deleted. feedline writes per-version SCHEMA records
/// instead, but applies these so a topic written by Confluent reads correctly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSubjectValue {
    pub subject: String,
    pub version: u32,
}

/// The value of an `ID_FLOOR` key (a feedline extension): the highest id ever handed out.
/// Written with every permanent delete, so that once compaction removed the tombstoned
/// schema records, a restarted registry still never hands out a deleted id again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdFloorValue {
    pub max_id: u32,
}

/// One record of the log, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Schema {
        subject: String,
        version: u32,
        /// `None` is a tombstone: the version is permanently deleted.
        value: Option<SchemaValue>,
    },
    Config {
        /// `None` is the global config.
        subject: Option<String>,
        value: Option<ConfigValue>,
    },
    DeleteSubject {
        subject: String,
        value: Option<DeleteSubjectValue>,
    },
    IdFloor(Option<IdFloorValue>),
    /// Carries nothing; written to learn how far the log has been read (see `store`).
    Noop,
    /// A key type this registry does not use (MODE, CONTEXT, ...), skipped.
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record without a key")]
    MissingKey,
    #[error("malformed record key: {0}")]
    Key(serde_json::Error),
    #[error("key type {keytype} lacks field {field}")]
    KeyField {
        keytype: String,
        field: &'static str,
    },
    #[error("malformed {keytype} record value: {source}")]
    Value {
        keytype: &'static str,
        source: serde_json::Error,
    },
}

#[derive(Serialize)]
struct SchemaKeyOut<'a> {
    keytype: &'static str,
    subject: &'a str,
    version: u32,
    magic: u32,
}

#[derive(Serialize)]
struct SubjectKeyOut<'a> {
    keytype: &'static str,
    subject: Option<&'a str>,
    magic: u32,
}

#[derive(Serialize)]
struct BareKeyOut<'a> {
    keytype: &'a str,
    magic: u32,
}

#[derive(Deserialize)]
struct KeyIn {
    keytype: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    version: Option<u32>,
}

const SCHEMA: &str = "SCHEMA";
const CONFIG: &str = "CONFIG";
const DELETE_SUBJECT: &str = "DELETE_SUBJECT";
const NOOP: &str = "NOOP";
const ID_FLOOR: &str = "ID_FLOOR";

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("record types always serialize")
}

impl Record {
    /// The key and value bytes to produce (`None` value = tombstone).
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            Record::Schema {
                subject,
                version,
                value,
            } => (
                to_vec(&SchemaKeyOut {
                    keytype: SCHEMA,
                    subject,
                    version: *version,
                    magic: 1,
                }),
                value.as_ref().map(to_vec),
            ),
            Record::Config { subject, value } => (
                to_vec(&SubjectKeyOut {
                    keytype: CONFIG,
                    subject: subject.as_deref(),
                    magic: 0,
                }),
                value.as_ref().map(to_vec),
            ),
            Record::DeleteSubject { subject, value } => (
                to_vec(&SubjectKeyOut {
                    keytype: DELETE_SUBJECT,
                    subject: Some(subject),
                    magic: 0,
                }),
                value.as_ref().map(to_vec),
            ),
            Record::IdFloor(value) => (
                to_vec(&BareKeyOut {
                    keytype: ID_FLOOR,
                    magic: 0,
                }),
                value.as_ref().map(to_vec),
            ),
            Record::Noop => (
                to_vec(&BareKeyOut {
                    keytype: NOOP,
                    magic: 0,
                }),
                None,
            ),
            Record::Other(keytype) => (to_vec(&BareKeyOut { keytype, magic: 0 }), None),
        }
    }

    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Record, RecordError> {
        let key: KeyIn = serde_json::from_slice(key.ok_or(RecordError::MissingKey)?)
            .map_err(RecordError::Key)?;
        // Confluent writes some tombstones as an empty payload rather than a null one.
        let value = value.filter(|v| !v.is_empty());
        let subject = |keytype: &str, subject: Option<String>| {
            subject.ok_or_else(|| RecordError::KeyField {
                keytype: keytype.to_owned(),
                field: "subject",
            })
        };
        fn parse<T: serde::de::DeserializeOwned>(
            keytype: &'static str,
            value: Option<&[u8]>,
        ) -> Result<Option<T>, RecordError> {
            value
                .map(|v| serde_json::from_slice(v))
                .transpose()
                .map_err(|source| RecordError::Value { keytype, source })
        }
        Ok(match key.keytype.as_str() {
            SCHEMA => Record::Schema {
                subject: subject(SCHEMA, key.subject)?,
                version: key.version.ok_or(RecordError::KeyField {
                    keytype: SCHEMA.to_owned(),
                    field: "version",
                })?,
                value: parse(SCHEMA, value)?,
            },
            CONFIG => Record::Config {
                subject: key.subject,
                value: parse(CONFIG, value)?,
            },
            DELETE_SUBJECT => Record::DeleteSubject {
                subject: subject(DELETE_SUBJECT, key.subject)?,
                value: parse(DELETE_SUBJECT, value)?,
            },
            ID_FLOOR => Record::IdFloor(parse(ID_FLOOR, value)?),
            NOOP => Record::Noop,
            _ => Record::Other(key.keytype),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_confluents_bytes() {
        let record = Record::Schema {
            subject: "orders-value".into(),
            version: 3,
            value: None,
        };
        let (key, value) = record.encode();
        assert_eq!(
            std::str::from_utf8(&key).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"orders-value","version":3,"magic":1}"#
        );
        assert_eq!(value, None);
        let (key, _) = Record::Config {
            subject: None,
            value: None,
        }
        .encode();
        assert_eq!(
            std::str::from_utf8(&key).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
    }

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Schema {
                subject: "s".into(),
                version: 1,
                value: Some(SchemaValue {
                    subject: "s".into(),
                    version: 1,
                    id: 7,
                    schema_type: None,
                    references: vec![Reference {
                        name: "a.B".into(),
                        subject: "b".into(),
                        version: 2,
                    }],
                    schema: r#""string""#.into(),
                    deleted: false,
                }),
            },
            Record::Config {
                subject: Some("s".into()),
                value: Some(ConfigValue {
                    compatibility_level: Some(Level::Full),
                }),
            },
            Record::IdFloor(Some(IdFloorValue { max_id: 9 })),
            Record::Noop,
        ];
        for record in records {
            let (key, value) = record.encode();
            assert_eq!(
                Record::decode(Some(&key), value.as_deref()).unwrap(),
                record
            );
        }
    }

    #[test]
    fn confluent_written_values_decode() {
        let key = br#"{"keytype":"SCHEMA","subject":"t-value","version":1,"magic":1}"#;
        let value = br#"{"subject":"t-value","version":1,"id":1,"schema":"\"string\"","deleted":false,"schemaTagsToAdd":null}"#;
        let Record::Schema { value: Some(v), .. } = Record::decode(Some(key), Some(value)).unwrap()
        else {
            panic!("not a schema record");
        };
        assert_eq!(v.id, 1);
        assert_eq!(v.schema_type(), "AVRO");
        let mode = Record::decode(Some(br#"{"keytype":"MODE","magic":0}"#), Some(b"{}")).unwrap();
        assert_eq!(mode, Record::Other("MODE".into()));
    }
}
