//! Compatibility levels and the check itself. The decision is apache-avro's
//! (`SchemaCompatibility::can_read`); this module picks which pairs to check for a level and
//! words the failures the way a user can act on (which field, which schema, which version).

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::error::CompatibilityError;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A compatibility level, as Confluent names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

/// What a subject without its own config, in a registry without a global config, uses.
pub const DEFAULT_LEVEL: Level = Level::Backward;

impl Level {
    pub const ALL: [Level; 7] = [
        Level::None,
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Checked against every earlier version rather than only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    /// The new schema must read data written with the old one.
    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    /// The old schema must read data written with the new one.
    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compatibility level {0:?}")]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;

    /// Case-insensitive, like Confluent's `CompatibilityLevel.forName`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An earlier version to check a new schema against.
#[derive(Debug)]
pub struct Previous<'a> {
    pub version: u32,
    pub schema: &'a Schema,
}

/// Checks `new` against `previous` (already narrowed to the latest version, or all of them,
/// by the caller) and returns what breaks; empty means compatible.
pub fn check(level: Level, new: &Schema, previous: &[Previous<'_>]) -> Vec<String> {
    if level == Level::None {
        return Vec::new();
    }
    let mut messages = Vec::new();
    for old in previous {
        let mut broken = false;
        if level.backward()
            && let Some(problem) = can_read(old.schema, new)
        {
            messages.push(problem.describe(Role::New, Role::Old, old.version));
            broken = true;
        }
        if level.forward()
            && let Some(problem) = can_read(new, old.schema)
        {
            messages.push(problem.describe(Role::Old, Role::New, old.version));
            broken = true;
        }
        if broken {
            messages.push(format!("{{oldSchemaVersion: {}}}", old.version));
        }
    }
    if !messages.is_empty() {
        messages.push(format!("{{compatibility: '{level}'}}"));
    }
    messages
}

/// Which of the two schemas a message talks about.
#[derive(Debug, Clone, Copy)]
enum Role {
    New,
    Old,
}

impl Role {
    fn name(self, old_version: u32) -> String {
        match self {
            Role::New => "the new schema".to_owned(),
            Role::Old => format!("the old schema (version {old_version})"),
        }
    }
}

/// Why a reader cannot read a writer's data.
#[derive(Debug)]
enum Problem {
    Error(CompatibilityError),
    /// apache-avro's `Partial`: only some of the writer's values can be read, which a registry
    /// must treat as incompatible (Confluent reports it as a missing enum symbol or union type).
    Partial,
}

fn can_read(writer: &Schema, reader: &Schema) -> Option<Problem> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some(Problem::Partial),
        Err(e) => Some(Problem::Error(e)),
    }
}

impl Problem {
    fn describe(&self, reader: Role, writer: Role, old_version: u32) -> String {
        let r = reader.name(old_version);
        let w = writer.name(old_version);
        match self {
            Problem::Partial => format!(
                "MISSING_ENUM_SYMBOL_OR_UNION_TYPE: {r} cannot read every value written with {w}: an enum symbol or union type of {w} is missing in {r}"
            ),
            Problem::Error(e) => {
                let mut path = Vec::new();
                let mut inner = e;
                while let CompatibilityError::FieldTypeMismatch(field, cause) = inner {
                    path.push(field.as_str());
                    inner = cause;
                }
                let at = if path.is_empty() {
                    String::new()
                } else {
                    format!(" at field '{}'", path.join("."))
                };
                describe_error(inner, &at, &path, &r, &w)
            }
        }
    }
}

fn describe_error(e: &CompatibilityError, at: &str, path: &[&str], r: &str, w: &str) -> String {
    match e {
        CompatibilityError::MissingDefaultValue(field) => {
            let mut full = path.to_vec();
            full.push(field);
            format!(
                "READER_FIELD_MISSING_DEFAULT_VALUE: the field '{}' in {r} has no default value and is missing in {w}",
                full.join(".")
            )
        }
        CompatibilityError::WrongType {
            writer_schema_type,
            reader_schema_type,
        } => format!(
            "TYPE_MISMATCH{at}: {w} has type {} where {r} has type {}",
            kind(writer_schema_type),
            kind(reader_schema_type)
        ),
        CompatibilityError::NameMismatch {
            writer_name,
            reader_name,
        } => format!(
            "NAME_MISMATCH{at}: the type named '{writer_name}' in {w} is named '{reader_name}' in {r}"
        ),
        CompatibilityError::MissingSymbols => {
            format!("MISSING_ENUM_SYMBOLS{at}: {r} has none of the enum symbols of {w}")
        }
        CompatibilityError::MissingUnionElements
        | CompatibilityError::SchemaMismatchAllUnionElements => format!(
            "MISSING_UNION_BRANCH{at}: no type of the union in {r} can read what {w} writes"
        ),
        CompatibilityError::FixedMismatch => {
            format!("FIXED_SIZE_MISMATCH{at}: the fixed sizes of {w} and {r} differ")
        }
        other => format!("INCOMPATIBLE{at}: {other} ({r} reading data of {w})"),
    }
}

/// `WrongType` carries `{:#?}` dumps of both schemas; the variant name in front is the part
/// a person needs ("String", "Record", ...).
fn kind(debug: &str) -> String {
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    if name.is_empty() {
        "unknown".to_owned()
    } else {
        name.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"User","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    fn prev(schema: &Schema) -> Vec<Previous<'_>> {
        vec![Previous { version: 1, schema }]
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!("backward".parse::<Level>().unwrap(), Level::Backward);
        assert_eq!(
            "FULL_TRANSITIVE".parse::<Level>().unwrap(),
            Level::FullTransitive
        );
        assert!("SIDEWAYS".parse::<Level>().is_err());
    }

    #[test]
    fn backward_needs_defaults_for_new_fields() {
        let v1 = record(r#"{"name":"id","type":"long"}"#);
        let no_default = record(r#"{"name":"id","type":"long"},{"name":"email","type":"string"}"#);
        let with_default =
            record(r#"{"name":"id","type":"long"},{"name":"email","type":"string","default":""}"#);
        let messages = check(Level::Backward, &no_default, &prev(&v1));
        assert!(messages[0].contains("'email'"), "{messages:?}");
        assert!(messages[0].contains("READER_FIELD_MISSING_DEFAULT_VALUE"));
        assert!(check(Level::Backward, &with_default, &prev(&v1)).is_empty());
        // Forward: the old schema ignores the new field, so no default is needed.
        assert!(check(Level::Forward, &no_default, &prev(&v1)).is_empty());
        assert!(!check(Level::Full, &no_default, &prev(&v1)).is_empty());
        assert!(check(Level::None, &no_default, &prev(&v1)).is_empty());
    }

    #[test]
    fn type_changes_name_the_field() {
        let v1 = record(r#"{"name":"id","type":"long"}"#);
        let v2 = record(r#"{"name":"id","type":"string"}"#);
        let messages = check(Level::Backward, &v2, &prev(&v1));
        assert!(
            messages[0].starts_with("TYPE_MISMATCH at field 'id'"),
            "{messages:?}"
        );
        assert!(messages[0].contains("long") && messages[0].contains("string"));
    }

    #[test]
    fn removed_enum_symbols_are_incompatible() {
        let v1 = Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#).unwrap();
        let v2 = Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A"]}"#).unwrap();
        assert!(!check(Level::Backward, &v2, &prev(&v1)).is_empty());
        assert!(check(Level::Forward, &v2, &prev(&v1)).is_empty());
    }
}
