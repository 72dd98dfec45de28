//! Writer → reader schema resolution of decoded data, per the Avro specification.
//!
//! apache-avro 0.22 resolves a union by trying the reader's branches in order and taking the
//! first one the value fits *structurally*, so an `OrderCancelled` written under a newer
//! schema can come out as `OrderCreated` (its fields are a superset). The specification
//! matches named branches by name; this module does that, and leaves the leaves (primitive
//! promotions, logical types, enums, fixed) to apache-avro, where they are right.

use apache_avro::Schema;
use apache_avro::schema::{Name, NamesRef};
use apache_avro::types::Value;

/// The two schemas with their named types, as needed to follow references.
pub(crate) struct Schemas<'a> {
    pub writer_names: &'a NamesRef<'a>,
    pub reader_names: &'a NamesRef<'a>,
    /// Reader's named schemas, for resolving field defaults that reference them.
    pub reader_list: Vec<&'a Schema>,
}

fn deref<'a>(schema: &'a Schema, names: &'a NamesRef<'a>) -> Result<&'a Schema, String> {
    match schema {
        Schema::Ref { name } => names
            .get(name)
            .copied()
            .ok_or_else(|| format!("unknown named type {name}")),
        other => Ok(other),
    }
}

fn named(schema: &Schema) -> Option<&Name> {
    match schema {
        Schema::Record(r) => Some(&r.name),
        Schema::Enum(e) => Some(&e.name),
        Schema::Fixed(f) => Some(&f.name),
        _ => None,
    }
}

/// Resolves `value`, written with `writer`, to the `reader` schema.
pub(crate) fn resolve(
    value: Value,
    writer: &Schema,
    reader: &Schema,
    s: &Schemas<'_>,
) -> Result<Value, String> {
    let writer = deref(writer, s.writer_names)?;
    let reader = deref(reader, s.reader_names)?;
    match (writer, reader) {
        (Schema::Union(wu), _) => {
            let Value::Union(index, inner) = value else {
                return Err("union data without a branch".into());
            };
            let branch = wu
                .variants()
                .get(index as usize)
                .ok_or_else(|| format!("union branch {index} out of range"))?;
            resolve(*inner, branch, reader, s)
        }
        (_, Schema::Union(ru)) => {
            let (index, branch) = pick_branch(writer, ru.variants(), s)?;
            Ok(Value::Union(
                index as u32,
                Box::new(resolve(value, writer, branch, s)?),
            ))
        }
        (Schema::Record(wr), Schema::Record(rr)) => {
            let Value::Record(mut fields) = value else {
                return Err(format!("{} data is not a record", wr.name));
            };
            let mut out = Vec::with_capacity(rr.fields.len());
            for field in &rr.fields {
                let written = wr.lookup.get(&field.name).map(|&i| {
                    let value = std::mem::replace(&mut fields[i].1, Value::Null);
                    (value, &wr.fields[i].schema)
                });
                let value = match (written, &field.default) {
                    (Some((value, schema)), _) => resolve(value, schema, &field.schema, s)?,
                    (None, Some(default)) => Value::try_from(default.clone())
                        .and_then(|v| v.resolve_schemata(&field.schema, s.reader_list.clone()))
                        .map_err(|e| format!("default of {}.{}: {e}", rr.name, field.name))?,
                    (None, None) => {
                        return Err(format!(
                            "field {}.{} is missing from the written data and has no default",
                            rr.name, field.name
                        ));
                    }
                };
                out.push((field.name.clone(), value));
            }
            Ok(Value::Record(out))
        }
        (Schema::Array(wa), Schema::Array(ra)) => match value {
            Value::Array(items) => items
                .into_iter()
                .map(|v| resolve(v, &wa.items, &ra.items, s))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            _ => Err("array data is not an array".into()),
        },
        (Schema::Map(wm), Schema::Map(rm)) => match value {
            Value::Map(entries) => entries
                .into_iter()
                .map(|(k, v)| Ok((k, resolve(v, &wm.types, &rm.types, s)?)))
                .collect::<Result<_, String>>()
                .map(Value::Map),
            _ => Err("map data is not a map".into()),
        },
        (_, reader) => value
            .resolve_schemata(reader, s.reader_list.clone())
            .map_err(|e| e.to_string()),
    }
}

/// The reader union's branch for data of `writer`: the same name for named types, else the
/// first branch of the same kind, else the first the value can be promoted to.
fn pick_branch<'r>(
    writer: &Schema,
    branches: &'r [Schema],
    s: &Schemas<'_>,
) -> Result<(usize, &'r Schema), String> {
    let resolved: Vec<&Schema> = branches
        .iter()
        .map(|b| deref(b, s.reader_names))
        .collect::<Result<_, _>>()?;
    if let Some(name) = named(writer) {
        return resolved
            .iter()
            .position(|b| named(b) == Some(name))
            .map(|i| (i, &branches[i]))
            .ok_or_else(|| format!("the reader's union has no branch named {name}"));
    }
    let kind = |schema: &Schema| std::mem::discriminant(schema);
    if let Some(i) = resolved.iter().position(|b| kind(b) == kind(writer)) {
        return Ok((i, &branches[i]));
    }
    let promotable = |to: &Schema| {
        matches!(
            (writer, to),
            (Schema::Int, Schema::Long | Schema::Float | Schema::Double)
                | (Schema::Long, Schema::Float | Schema::Double)
                | (Schema::Float, Schema::Double)
                | (Schema::String, Schema::Bytes)
                | (Schema::Bytes, Schema::String)
        )
    };
    resolved
        .iter()
        .position(|b| promotable(b))
        .map(|i| (i, &branches[i]))
        .ok_or_else(|| "the reader's union has no branch for the written type".into())
}
