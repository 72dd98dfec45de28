//! Shared by the tests of both directions: one record with every shape the direct path
//! implements, and apache-avro as the reference to compare bytes with.

use std::collections::BTreeMap;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::DirectCodec;

/// Every shape the direct path implements, in one record.
pub(super) const ALL: &str = r#"{"type":"record","name":"All","namespace":"t","fields":[
    {"name":"b","type":"boolean"},
    {"name":"i","type":"int"},
    {"name":"l","type":"long"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"f","type":"float"},
    {"name":"d","type":"double"},
    {"name":"s","type":"string"},
    {"name":"id","type":{"type":"string","logicalType":"uuid"}},
    {"name":"raw","type":"bytes"},
    {"name":"opt","type":["null","long"],"default":null},
    {"name":"opt_last","type":["string","null"]},
    {"name":"colour","type":{"type":"enum","name":"Colour","symbols":["RED","GREEN","BLUE"]}},
    {"name":"list","type":{"type":"array","items":"string"}},
    {"name":"map","type":{"type":"map","values":"int"}},
    {"name":"choice","type":[
        {"type":"record","name":"A","fields":[{"name":"x","type":"long"}]},
        {"type":"record","name":"B","fields":[{"name":"y","type":"string"},{"name":"a","type":"A"}]}
    ]}
]}"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct All {
    b: bool,
    i: i32,
    l: i64,
    ts: i64,
    f: f32,
    d: f64,
    s: String,
    id: String,
    #[serde(with = "serde_bytes_vec")]
    raw: Vec<u8>,
    opt: Option<i64>,
    opt_last: Option<String>,
    colour: Colour,
    list: Vec<String>,
    map: BTreeMap<String, i32>,
    choice: Choice,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub(super) enum Colour {
    RED,
    GREEN,
    BLUE,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct A {
    pub(super) x: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct B {
    y: String,
    a: A,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Choice {
    A(A),
    B(B),
}

/// `Vec<u8>` as serde bytes (serde's default is a sequence of u8).
pub(super) mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

pub(super) fn sample() -> All {
    All {
        b: true,
        i: -1,
        l: i64::MIN,
        ts: 1_764_000_000_123,
        f: 1.5,
        d: -0.25,
        s: "grüße, 世界 🚀".into(),
        id: "8a6e0804-2bd0-4672-b79d-d97027f9071a".into(),
        raw: vec![0, 255, 7],
        opt: Some(i64::MAX),
        opt_last: Some(String::new()),
        colour: Colour::BLUE,
        list: vec!["a".into(), String::new(), "ç".into()],
        map: [("k".to_owned(), i32::MIN), ("".to_owned(), i32::MAX)].into(),
        choice: Choice::B(B {
            y: "why".into(),
            a: A { x: -64 },
        }),
    }
}

pub(super) fn variants() -> Vec<All> {
    let base = sample();
    let mut out = vec![base.clone()];
    for (i, l) in [0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN]
        .into_iter()
        .enumerate()
    {
        let mut v = base.clone();
        v.l = l;
        v.i = [0, 1, -1, i32::MAX, i32::MIN][i % 5];
        v.b = i % 2 == 0;
        v.opt = if i % 3 == 0 { None } else { Some(l) };
        v.opt_last = if i % 2 == 0 {
            None
        } else {
            Some(format!("n{i}"))
        };
        v.colour = [Colour::RED, Colour::GREEN, Colour::BLUE][i % 3];
        v.list = (0..i).map(|n| n.to_string()).collect();
        v.map = (0..i).map(|n| (format!("k{n}"), n as i32)).collect();
        v.raw = vec![i as u8; i * 50];
        v.s = "x".repeat(i * 40);
        v.choice = if i % 2 == 0 {
            Choice::A(A { x: l })
        } else {
            Choice::B(B {
                y: String::new(),
                a: A { x: l },
            })
        };
        out.push(v);
    }
    out
}

pub(super) fn apache_bytes<T: Serialize>(schema: &Schema, value: &T) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_ser_to_vec(value)
        .unwrap()
}

pub(super) fn apache_read<T: DeserializeOwned>(schema: &Schema, bytes: &[u8]) -> T {
    GenericDatumReader::builder(schema)
        .build()
        .unwrap()
        .read_deser(&mut &bytes[..])
        .unwrap()
}

pub(super) fn direct_bytes<T: Serialize>(codec: &DirectCodec, value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    codec.encode(value, &mut out).unwrap();
    out
}
