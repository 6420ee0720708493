//! Schema compatibility: Pulsar's `SchemaCompatibilityStrategy` and the per-type checks a new
//! schema version (producer) or a reader's schema (consumer) must pass.
//!
//! As Pulsar's `SchemaRegistryServiceImpl` and its checkers:
//! - `ALWAYS_COMPATIBLE` accepts anything, even another type; every other strategy refuses a
//!   schema of another type than the versions it is checked against;
//! - non-transitive strategies check against the latest version, `*_TRANSITIVE` against all;
//! - AVRO, and JSON whose definitions are Avro records, are checked with Avro schema resolution
//!   as Pulsar's validator applies it (`avro_resolve.rs`: records match by fields, not by
//!   name): BACKWARD = the new schema can read data written with the old,
//!   FORWARD = the old can read data written with the new, FULL = both. A JSON definition that
//!   does not parse as Avro is a legacy (Jackson) JSON schema, accepted as Pulsar does;
//! - KEY_VALUE: its key and value parts (Pulsar's `KeyValueSchemaInfo` encoding) are checked
//!   separately, each by its own type's check; their types must not change;
//! - every other type (PROTOBUF, PROTOBUF_NATIVE, primitives): same type = compatible, except
//!   under `ALWAYS_INCOMPATIBLE`, which refuses any new definition.

use std::collections::BTreeMap;

use apache_avro::Schema as AvroSchema;
use magnetar_proto::pulsar::api::schema::Type as SchemaType;

use super::{StoredSchema, type_name};

pub use crate::policies::CompatibilityStrategy;

/// The strategy a consumer's schema is checked with (Pulsar's
/// `checkConsumerCompatibility`): a reader must be able to read the latest version under
/// BACKWARD, FORWARD, FORWARD_TRANSITIVE and FULL; the other strategies apply as they are,
/// against all versions.
fn for_consumer(strategy: CompatibilityStrategy) -> (CompatibilityStrategy, bool) {
    use CompatibilityStrategy as S;
    match strategy {
        S::Backward | S::Forward | S::ForwardTransitive | S::Full => (S::Backward, false),
        other => (other, true),
    }
}

/// Whether a producer's new schema `new` may become the next version after `existing`
/// (oldest first, not empty, none equal to `new`); `Err` is the reason.
pub fn check_new_version(
    existing: &[StoredSchema],
    new: &StoredSchema,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    check(existing, new, strategy, strategy.is_transitive())
}

/// Whether a consumer reading with `schema` is compatible with the topic's versions
/// `existing` (oldest first, not empty) under the topic's `strategy`.
pub fn check_consumer(
    existing: &[StoredSchema],
    schema: &StoredSchema,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    let (strategy, all) = for_consumer(strategy);
    check(existing, schema, strategy, all)
}

fn check(
    existing: &[StoredSchema],
    new: &StoredSchema,
    strategy: CompatibilityStrategy,
    all: bool,
) -> Result<(), String> {
    if strategy == CompatibilityStrategy::AlwaysCompatible {
        return Ok(());
    }
    let against: Vec<&StoredSchema> = if all {
        existing.iter().collect()
    } else {
        existing.last().into_iter().collect()
    };
    if let Some(other) = against.iter().find(|s| s.schema_type != new.schema_type) {
        return Err(format!(
            "existing schema type {} (version {}), new schema type {}",
            type_name(other.schema_type),
            other.version,
            type_name(new.schema_type)
        ));
    }
    // Pulsar skips the check against a version with the same definition.
    let against: Vec<&StoredSchema> = against.into_iter().filter(|s| s.data != new.data).collect();
    if against.is_empty() {
        return Ok(());
    }
    check_same_type(&against, new, strategy)
}

/// The check of one type; every schema in `against` has `new`'s type.
fn check_same_type(
    against: &[&StoredSchema],
    new: &StoredSchema,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    match SchemaType::try_from(new.schema_type) {
        Ok(SchemaType::Avro) => check_avro(against, new, strategy),
        Ok(SchemaType::Json) => check_json(against, new, strategy),
        Ok(SchemaType::KeyValue) => check_key_value(against, new, strategy),
        _ if strategy == CompatibilityStrategy::AlwaysIncompatible => {
            Err("strategy ALWAYS_INCOMPATIBLE accepts no new schema definition".to_owned())
        }
        _ => Ok(()),
    }
}

fn parse_avro(s: &StoredSchema, what: &str) -> Result<AvroSchema, String> {
    let text = std::str::from_utf8(&s.data)
        .map_err(|_| format!("invalid Avro schema definition ({what}): not UTF-8"))?;
    AvroSchema::parse_str(text).map_err(|e| format!("invalid Avro schema definition ({what}): {e}"))
}

/// `reader` can read all data written with `writer`, by the resolution rules Pulsar checks
/// (see `avro_resolve`).
fn can_read(writer: &AvroSchema, reader: &AvroSchema) -> Result<(), String> {
    super::avro_resolve::can_read(writer, reader)
}

fn check_avro(
    against: &[&StoredSchema],
    new: &StoredSchema,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    use CompatibilityStrategy as S;
    let new_avro = parse_avro(new, "new schema")?;
    // Newest first, as Pulsar's validator sees them.
    for old in against.iter().rev() {
        let old_avro = parse_avro(old, &format!("version {}", old.version))?;
        let backward = || {
            can_read(&old_avro, &new_avro).map_err(|r| {
                format!(
                    "the new schema cannot read data written with version {}: {r}",
                    old.version
                )
            })
        };
        let forward = || {
            can_read(&new_avro, &old_avro).map_err(|r| {
                format!(
                    "version {} cannot read data written with the new schema: {r}",
                    old.version
                )
            })
        };
        match strategy {
            S::AlwaysCompatible => {}
            S::AlwaysIncompatible => {
                return Err("strategy ALWAYS_INCOMPATIBLE accepts no new schema".to_owned());
            }
            S::Backward | S::BackwardTransitive => backward()?,
            S::Forward | S::ForwardTransitive => forward()?,
            S::Full | S::FullTransitive => {
                backward()?;
                forward()?;
            }
        }
    }
    Ok(())
}

/// Whether a JSON schema definition is an Avro record (else a legacy Jackson JSON schema).
fn is_avro_definition(s: &StoredSchema) -> bool {
    std::str::from_utf8(&s.data).is_ok_and(|t| AvroSchema::parse_str(t).is_ok())
}

/// Pulsar's `JsonSchemaCompatibilityCheck`: Avro rules when both are Avro definitions; a
/// legacy definition on either side is accepted (it is overwritten / kept for old clients),
/// except that two legacy definitions must have the same `id`.
fn check_json(
    against: &[&StoredSchema],
    new: &StoredSchema,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    let new_is_avro = is_avro_definition(new);
    let mut avro_against = Vec::with_capacity(against.len());
    for old in against {
        match (is_avro_definition(old), new_is_avro) {
            (true, true) => avro_against.push(*old),
            (false, false) => {
                let id = |s: &StoredSchema| {
                    serde_json::from_slice::<serde_json::Value>(&s.data)
                        .ok()
                        .and_then(|v| v.get("id").cloned())
                };
                if id(old) != id(new) {
                    return Err(format!(
                        "legacy JSON schema of version {} has another id than the new one",
                        old.version
                    ));
                }
            }
            _ => {}
        }
    }
    if avro_against.is_empty() {
        return Ok(());
    }
    check_avro(&avro_against, new, strategy)
}

/// The key and value parts of a KEY_VALUE schema, as separate schemas.
fn split_key_value(s: &StoredSchema) -> Result<(StoredSchema, StoredSchema), String> {
    let data = &s.data[..];
    let part = |at: usize| -> Option<(&[u8], usize)> {
        let len_bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        let len = usize::try_from(i32::from_be_bytes(len_bytes)).ok()?;
        let start = at.checked_add(4)?;
        let end = start.checked_add(len)?;
        Some((data.get(start..end)?, end))
    };
    let invalid = || format!("invalid KEY_VALUE schema (version {})", s.version);
    let (key, next) = part(0).ok_or_else(invalid)?;
    let (value, _) = part(next).ok_or_else(invalid)?;
    let sub = |prefix: &str, data: &[u8]| -> Result<StoredSchema, String> {
        let schema_type = match s.properties.get(&format!("{prefix}.schema.type")) {
            None => SchemaType::None as i32,
            Some(name) => type_from_name(name)
                .ok_or_else(|| format!("unknown {prefix} schema type {name:?}"))?,
        };
        let properties: BTreeMap<String, String> = s
            .properties
            .get(&format!("{prefix}.schema.properties"))
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        Ok(StoredSchema {
            version: s.version,
            schema_type,
            name: prefix.to_owned(),
            data: data.to_vec(),
            properties,
            hash: String::new(),
            timestamp_ms: s.timestamp_ms,
        })
    };
    Ok((sub("key", key)?, sub("value", value)?))
}

/// A Pulsar type name (`AVRO`, `KEY_VALUE`, `BYTES`) as its wire value.
fn type_from_name(name: &str) -> Option<i32> {
    match name {
        "BYTES" | "NONE" => Some(SchemaType::None as i32),
        "BOOLEAN" => Some(SchemaType::Bool as i32),
        _ => (0..=SchemaType::External as i32)
            .find(|t| SchemaType::try_from(*t).is_ok() && type_name(*t) == name),
    }
}

fn check_key_value(
    against: &[&StoredSchema],
    new: &StoredSchema,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    let (new_key, new_value) = split_key_value(new)?;
    let mut keys = Vec::with_capacity(against.len());
    let mut values = Vec::with_capacity(against.len());
    for old in against {
        let (k, v) = split_key_value(old)?;
        keys.push(k);
        values.push(v);
    }
    for (part, olds, new) in [("key", &keys, &new_key), ("value", &values, &new_value)] {
        if let Some(other) = olds.iter().find(|o| o.schema_type != new.schema_type) {
            return Err(format!(
                "the {part} schema type changes from {} (version {}) to {}",
                type_name(other.schema_type),
                other.version,
                type_name(new.schema_type)
            ));
        }
        let changed: Vec<&StoredSchema> = olds.iter().filter(|o| o.data != new.data).collect();
        if !changed.is_empty() {
            check_same_type(&changed, new, strategy).map_err(|r| format!("{part} schema: {r}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use CompatibilityStrategy as S;

    fn avro(version: u64, fields: &str) -> StoredSchema {
        of(
            SchemaType::Avro,
            version,
            format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#),
        )
    }

    fn of(ty: SchemaType, version: u64, data: String) -> StoredSchema {
        StoredSchema {
            version,
            schema_type: ty as i32,
            name: "t".into(),
            data: data.into_bytes(),
            properties: BTreeMap::new(),
            hash: String::new(),
            timestamp_ms: 0,
        }
    }

    const A: &str = r#"{"name":"a","type":"string"}"#;
    const B_OPTIONAL: &str = r#"{"name":"b","type":["null","int"],"default":null}"#;
    const B_REQUIRED: &str = r#"{"name":"b","type":"int"}"#;
    const A_INT: &str = r#"{"name":"a","type":"int"}"#;
    const A_LONG: &str = r#"{"name":"a","type":"long"}"#;

    fn v0() -> StoredSchema {
        avro(0, A)
    }

    fn ok(existing: &[StoredSchema], new: &StoredSchema, s: S) -> bool {
        check_new_version(existing, new, s).is_ok()
    }

    #[test]
    fn strategies_parse_and_print_as_pulsar() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).ok(),
                Some(format!("\"{}\"", s.as_str()))
            );
        }
        assert_eq!(S::parse_policy("UNDEFINED"), Ok(None));
        assert_eq!(S::parse_policy("backward"), Ok(Some(S::Backward)));
        assert!(S::parse_policy("SIDEWAYS").is_err());
        assert_eq!(S::default(), S::Full);
    }

    #[test]
    fn adding_an_optional_field_passes_every_strategy_but_always_incompatible() {
        let new = avro(1, &format!("{A},{B_OPTIONAL}"));
        for s in S::ALL {
            assert_eq!(
                ok(&[v0()], &new, s),
                s != S::AlwaysIncompatible,
                "{s}: {:?}",
                check_new_version(&[v0()], &new, s)
            );
        }
    }

    #[test]
    fn adding_a_required_field_breaks_backward_only() {
        let new = avro(1, &format!("{A},{B_REQUIRED}"));
        assert!(ok(&[v0()], &new, S::Forward));
        assert!(ok(&[v0()], &new, S::AlwaysCompatible));
        for s in [
            S::Backward,
            S::Full,
            S::BackwardTransitive,
            S::FullTransitive,
        ] {
            let err = check_new_version(&[v0()], &new, s)
                .err()
                .unwrap_or_default();
            assert!(
                err.contains("cannot read data written with version 0") && err.contains("`b`"),
                "{s}: {err}"
            );
        }
    }

    #[test]
    fn removing_a_field_breaks_forward_unless_it_had_a_default() {
        let old_required = avro(0, &format!("{A},{B_REQUIRED}"));
        let old_optional = avro(0, &format!("{A},{B_OPTIONAL}"));
        let new = avro(1, A);
        assert!(ok(std::slice::from_ref(&old_required), &new, S::Backward));
        assert!(!ok(std::slice::from_ref(&old_required), &new, S::Forward));
        assert!(!ok(&[old_required], &new, S::Full));
        assert!(ok(std::slice::from_ref(&old_optional), &new, S::Forward));
        assert!(ok(&[old_optional], &new, S::Full));
    }

    #[test]
    fn changing_a_type_follows_avro_promotion() {
        let int = avro(0, A_INT);
        let long = avro(1, A_LONG);
        // A long reader reads ints (promotion), not the other way round.
        assert!(ok(std::slice::from_ref(&int), &long, S::Backward));
        assert!(!ok(std::slice::from_ref(&int), &long, S::Forward));
        assert!(!ok(&[int], &long, S::Full));
        let string = avro(1, A);
        let err = check_new_version(&[avro(0, A_INT)], &string, S::Backward)
            .err()
            .unwrap_or_default();
        assert!(err.contains("`a`"), "{err}");
    }

    fn named(version: u64, name: &str, fields: &str) -> StoredSchema {
        of(
            SchemaType::Avro,
            version,
            format!(r#"{{"type":"record","name":"{name}","fields":[{fields}]}}"#),
        )
    }

    #[test]
    fn records_match_by_fields_not_by_name_as_pulsar() {
        // The official Python client's test_schema_evolve: class User1, then class User2
        // with `age` now required, under FORWARD.
        let user1 = named(
            0,
            "User1",
            r#"{"name":"name","type":["null","string"]},{"name":"age","type":["null","int"]}"#,
        );
        let user2 = named(
            1,
            "User2",
            r#"{"name":"age","type":"int"},{"name":"name","type":["null","string"]}"#,
        );
        assert!(
            ok(std::slice::from_ref(&user1), &user2, S::Forward),
            "{:?}",
            check_new_version(std::slice::from_ref(&user1), &user2, S::Forward)
        );
        // Reading User1's data with User2 meets a null age: not BACKWARD, so not FULL.
        assert!(!ok(std::slice::from_ref(&user1), &user2, S::Full));
        // test_avro_required_default: the same fields, now with defaults, under FULL.
        let sub = r#"{"type":"record","name":"MySubRecord","fields":[
            {"name":"x","type":["null","int"]},{"name":"y","type":["null","long"]}]}"#;
        let plain = named(
            0,
            "Example",
            &format!(
                r#"{{"name":"a","type":["null","int"]}},{{"name":"b","type":"boolean"}},
                {{"name":"j","type":["null",{sub}]}}"#
            ),
        );
        let with_defaults = named(
            1,
            "ExampleRequiredDefault",
            &format!(
                r#"{{"name":"a","type":["null","int"],"default":null}},
                {{"name":"b","type":"boolean","default":false}},
                {{"name":"j","type":["null",{sub}],"default":null}}"#
            ),
        );
        assert!(
            ok(std::slice::from_ref(&plain), &with_defaults, S::Full),
            "{:?}",
            check_new_version(std::slice::from_ref(&plain), &with_defaults, S::Full)
        );
    }

    #[test]
    fn unions_enums_and_fixed_resolve_as_avro() {
        let enum_of = |name: &str, symbols: &str| {
            named(
                0,
                "R",
                &format!(
                    r#"{{"name":"e","type":{{"type":"enum","name":"{name}","symbols":[{symbols}]}}}}"#
                ),
            )
        };
        // Enums must keep their name; symbols are not compared (as Pulsar's validator).
        assert!(ok(
            &[enum_of("E", r#""A","B""#)],
            &enum_of("E", r#""A""#),
            S::Full
        ));
        assert!(!ok(
            &[enum_of("E", r#""A""#)],
            &enum_of("F", r#""A""#),
            S::Backward
        ));
        let fixed = |size: usize| {
            named(
                0,
                "R",
                &format!(r#"{{"name":"f","type":{{"type":"fixed","name":"F","size":{size}}}}}"#),
            )
        };
        assert!(ok(&[fixed(4)], &fixed(4), S::Full));
        assert!(!ok(&[fixed(4)], &fixed(8), S::Backward));
        // A record in a union is found by structure when its name changed.
        let in_union = |name: &str, reader_fields: &str| {
            named(
                0,
                "R",
                &format!(
                    r#"{{"name":"u","type":["null",{{"type":"record","name":"{name}","fields":[{reader_fields}]}}]}}"#
                ),
            )
        };
        let x = r#"{"name":"x","type":"int"}"#;
        let xy = r#"{"name":"x","type":"int"},{"name":"y","type":"long"}"#;
        assert!(ok(&[in_union("Old", x)], &in_union("New", x), S::Full));
        // ...but not when its fields cannot be read: y has no default.
        assert!(!ok(
            &[in_union("Old", x)],
            &in_union("New", xy),
            S::Backward
        ));
        // A writer union needs every branch readable; a reader union one matching branch.
        let field = |ty: &str| named(0, "R", &format!(r#"{{"name":"v","type":{ty}}}"#));
        assert!(ok(
            &[field(r#""int""#)],
            &field(r#"["null","long"]"#),
            S::Backward
        ));
        assert!(!ok(
            &[field(r#"["null","int"]"#)],
            &field(r#""long""#),
            S::Backward
        ));
        assert!(ok(&[field(r#""string""#)], &field(r#""bytes""#), S::Full));
    }

    #[test]
    fn recursive_records_resolve() {
        let list = |version: u64, extra: &str| {
            named(
                version,
                "Node",
                &format!(
                    r#"{{"name":"v","type":"int"}},{{"name":"next","type":["null","Node"]}}{extra}"#
                ),
            )
        };
        let optional = r#",{"name":"w","type":["null","int"],"default":null}"#;
        assert!(ok(&[list(0, "")], &list(1, optional), S::Full));
        assert!(!ok(
            &[list(0, "")],
            &list(1, r#",{"name":"w","type":"int"}"#),
            S::Backward
        ));
    }

    #[test]
    fn transitive_strategies_check_every_version() {
        // v0 {a}, v1 {a, b int default 0}, v2 {a, b int}: v2 reads v1 (b present), not v0.
        let v1 = avro(
            1,
            &format!(r#"{A},{{"name":"b","type":"int","default":0}}"#),
        );
        let v2 = avro(2, &format!("{A},{B_REQUIRED}"));
        let history = [v0(), v1];
        assert!(
            ok(&history, &v2, S::Backward),
            "{:?}",
            check_new_version(&history, &v2, S::Backward)
        );
        let err = check_new_version(&history, &v2, S::BackwardTransitive)
            .err()
            .unwrap_or_default();
        assert!(err.contains("version 0"), "{err}");
    }

    #[test]
    fn another_type_is_refused_unless_always_compatible() {
        let json = of(
            SchemaType::Json,
            1,
            avro(1, A).data.iter().map(|b| *b as char).collect(),
        );
        assert!(!ok(&[v0()], &json, S::Full));
        assert!(!ok(&[v0()], &json, S::Backward));
        assert!(ok(&[v0()], &json, S::AlwaysCompatible));
    }

    #[test]
    fn legacy_json_definitions_are_accepted() {
        let avro_json = of(
            SchemaType::Json,
            0,
            String::from_utf8_lossy(&v0().data).into(),
        );
        let legacy = of(
            SchemaType::Json,
            1,
            r#"{"type":"object","id":"urn:jsonschema:R","properties":{}}"#.into(),
        );
        let legacy_other_id = of(
            SchemaType::Json,
            2,
            r#"{"type":"object","id":"urn:jsonschema:Q","properties":{"x":{}}}"#.into(),
        );
        assert!(ok(std::slice::from_ref(&avro_json), &legacy, S::Full));
        assert!(ok(std::slice::from_ref(&legacy), &avro_json, S::Full));
        assert!(!ok(&[legacy], &legacy_other_id, S::Full));
        // Avro JSON definitions follow the Avro rules.
        let required = of(
            SchemaType::Json,
            1,
            String::from_utf8_lossy(&avro(1, &format!("{A},{B_REQUIRED}")).data).into(),
        );
        assert!(!ok(&[avro_json], &required, S::Full));
    }

    fn key_value(version: u64, key: &StoredSchema, value: &StoredSchema) -> StoredSchema {
        let mut data = Vec::new();
        for part in [&key.data, &value.data] {
            data.extend_from_slice(&(part.len() as i32).to_be_bytes());
            data.extend_from_slice(part);
        }
        let mut s = of(SchemaType::KeyValue, version, String::new());
        s.data = data;
        s.properties = BTreeMap::from([
            ("key.schema.type".to_owned(), type_name(key.schema_type)),
            ("value.schema.type".to_owned(), type_name(value.schema_type)),
        ]);
        s
    }

    #[test]
    fn key_value_parts_are_checked_separately() {
        let string = of(SchemaType::String, 0, String::new());
        let old = key_value(0, &string, &v0());
        let optional = key_value(1, &string, &avro(1, &format!("{A},{B_OPTIONAL}")));
        let required = key_value(1, &string, &avro(1, &format!("{A},{B_REQUIRED}")));
        assert!(ok(std::slice::from_ref(&old), &optional, S::Full));
        let err = check_new_version(std::slice::from_ref(&old), &required, S::Full)
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("value schema:"), "{err}");
        let int_key = key_value(
            1,
            &of(SchemaType::Int32, 0, String::new()),
            &avro(1, &format!("{A},{B_OPTIONAL}")),
        );
        let err = check_new_version(std::slice::from_ref(&old), &int_key, S::AlwaysIncompatible)
            .err()
            .unwrap_or_default();
        assert!(err.contains("key schema type changes"), "{err}");
        let mut truncated = optional.clone();
        truncated.data.truncate(6);
        assert!(!ok(&[old], &truncated, S::Full));
    }

    #[test]
    fn other_types_are_compatible_within_the_type() {
        let p0 = of(SchemaType::Protobuf, 0, "{\"a\":1}".into());
        let p1 = of(SchemaType::Protobuf, 1, "{\"b\":2}".into());
        assert!(ok(std::slice::from_ref(&p0), &p1, S::Full));
        assert!(ok(std::slice::from_ref(&p0), &p1, S::FullTransitive));
        assert!(!ok(&[p0], &p1, S::AlwaysIncompatible));
    }

    #[test]
    fn consumers_must_read_the_latest_version() {
        // A reader without field b reads v1 {a, b}: compatible under FULL (checked BACKWARD).
        let v1 = avro(1, &format!("{A},{B_REQUIRED}"));
        assert!(check_consumer(&[v0(), v1.clone()], &v0(), S::Full).is_ok());
        // A reader needing b (no default) cannot read v0 data, but FULL checks the latest only.
        let needs_b = avro(9, &format!("{A},{B_REQUIRED}"));
        assert!(check_consumer(&[v0()], &needs_b, S::Full).is_err());
        assert!(check_consumer(&[v0(), v1.clone()], &needs_b, S::Forward).is_ok());
        assert!(check_consumer(&[v0(), v1], &needs_b, S::BackwardTransitive).is_err());
        assert!(check_consumer(&[v0()], &needs_b, S::AlwaysCompatible).is_ok());
        assert!(check_consumer(&[v0()], &v0(), S::AlwaysIncompatible).is_ok());
    }
}
