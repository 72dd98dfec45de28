//! Request and response bodies shared by the handlers.

use serde::Serialize;
use serde_json::Value;

use crate::compat::Level;
use crate::error::ApiError;
use crate::ops::{NewSchema, RefRequest};
use crate::record::Reference;
use crate::schema;
use crate::state::StoredSchema;

/// The body of register, lookup and compatibility requests. Fields Confluent added later
/// (`metadata`, `ruleSet`, `id`, `version`, ...) are accepted and ignored.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SchemaRequest {
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<RefRequest>>,
}

impl SchemaRequest {
    /// Checks the type and that the schema text is JSON, before anything looks it up.
    pub(super) fn validate(self) -> Result<NewSchema, ApiError> {
        schema::check_type(self.schema_type.as_deref()).map_err(ApiError::invalid_schema)?;
        let text = match self.schema {
            Some(Value::String(text)) => text,
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_schema(schema::SchemaError::Empty));
            }
            Some(other) => {
                return Err(ApiError::invalid_schema(format!(
                    "\"schema\" must be a string holding the schema's JSON text, not {}",
                    json_kind(&other)
                )));
            }
        };
        schema::parse_json(&text).map_err(ApiError::invalid_schema)?;
        Ok(NewSchema {
            schema: text,
            references: self.references.unwrap_or_default(),
        })
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `{"compatibility": "BACKWARD"}`; `compatibilityLevel` (the GET shape) is accepted too.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConfigRequest {
    #[serde(default)]
    compatibility: Option<String>,
    #[serde(default)]
    compatibility_level: Option<String>,
}

impl ConfigRequest {
    pub(super) fn level(&self) -> Result<Level, ApiError> {
        self.compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .and_then(|l| l.parse().ok())
            .ok_or_else(ApiError::invalid_compatibility_level)
    }
}

/// A subject version with its schema, as `GET /subjects/{s}/versions/{v}` and the lookup
/// answer it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct VersionBody<'a> {
    subject: &'a str,
    version: u32,
    id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Reference]>::is_empty")]
    references: &'a [Reference],
    schema: &'a str,
}

impl<'a> VersionBody<'a> {
    pub(super) fn new(subject: &'a str, version: u32, stored: &'a StoredSchema) -> Self {
        VersionBody {
            subject,
            version,
            id: stored.id,
            schema_type: stored.served_type(),
            references: &stored.references,
            schema: &stored.schema,
        }
    }
}
