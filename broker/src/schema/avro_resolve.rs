//! Whether a reader's Avro schema can read data written with a writer's: the check Pulsar's
//! schema compatibility runs (`AvroSchemaBasedCompatibilityCheck` → Avro's `SchemaValidator`,
//! which resolves the two schemas and looks for errors in the result), not Avro's stricter
//! `SchemaCompatibility`.
//!
//! The differences matter to applications: every Pulsar client names a record after its
//! class, so two versions of one schema often differ in name (`User1`, `User2`), and Pulsar
//! accepts them. The rules, as Avro's resolver applies them:
//! - a writer union: every branch must be readable; a reader union: the writer's schema must
//!   match one branch — same type (a named type by full name, a record also by structure),
//!   else by promotion;
//! - records are matched by fields, **not by name**: each reader field is read from the
//!   writer's field of the same name, or must have a default; writer-only fields are skipped;
//! - enums and fixed must have the same full name (fixed also the same size); enum symbols
//!   are not compared (a missing symbol fails when such a value is read, not here);
//! - promotions int → long, float, double; long → float, double; float → double;
//!   string ↔ bytes; logical types resolve as their underlying types.

use std::collections::{HashMap, HashSet};

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, RecordSchema, UuidSchema};

/// The named types of one schema, to follow `Ref`s.
type Names<'a> = HashMap<Name, &'a Schema>;

fn collect_names<'a>(schema: &'a Schema, names: &mut Names<'a>) {
    match schema {
        Schema::Record(r) if names.insert(r.name.clone(), schema).is_none() => {
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema);
        }
        Schema::Fixed(f) | Schema::Duration(f) => {
            names.insert(f.name.clone(), schema);
        }
        Schema::Decimal(d) => {
            if let InnerDecimalSchema::Fixed(f) = &d.inner {
                names.insert(f.name.clone(), schema);
            }
        }
        Schema::Uuid(UuidSchema::Fixed(f)) => {
            names.insert(f.name.clone(), schema);
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_names(v, names);
            }
        }
        _ => {}
    }
}

/// The type resolution sees (logical types are their underlying type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Union,
    Record,
    Enum,
    Fixed,
}

fn kind(s: &Schema) -> Kind {
    match s {
        Schema::Null => Kind::Null,
        Schema::Boolean => Kind::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Kind::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Kind::Long,
        Schema::Float => Kind::Float,
        Schema::Double => Kind::Double,
        Schema::Bytes | Schema::BigDecimal | Schema::Uuid(UuidSchema::Bytes) => Kind::Bytes,
        Schema::String | Schema::Uuid(UuidSchema::String) => Kind::String,
        Schema::Decimal(d) => match d.inner {
            InnerDecimalSchema::Bytes => Kind::Bytes,
            InnerDecimalSchema::Fixed(_) => Kind::Fixed,
        },
        Schema::Uuid(UuidSchema::Fixed(_)) | Schema::Fixed(_) | Schema::Duration(_) => Kind::Fixed,
        Schema::Array(_) => Kind::Array,
        Schema::Map(_) => Kind::Map,
        Schema::Union(_) => Kind::Union,
        Schema::Record(_) => Kind::Record,
        Schema::Enum(_) => Kind::Enum,
        // Refs are followed before anything asks for their kind.
        Schema::Ref { .. } => Kind::Record,
    }
}

/// Full name and fixed size of a named schema.
fn named(s: &Schema) -> Option<(&Name, Option<usize>)> {
    match s {
        Schema::Record(r) => Some((&r.name, None)),
        Schema::Enum(e) => Some((&e.name, None)),
        Schema::Fixed(f) | Schema::Duration(f) | Schema::Uuid(UuidSchema::Fixed(f)) => {
            Some((&f.name, Some(f.size)))
        }
        Schema::Decimal(d) => match &d.inner {
            InnerDecimalSchema::Fixed(f) => Some((&f.name, Some(f.size))),
            InnerDecimalSchema::Bytes => None,
        },
        _ => None,
    }
}

fn promotes(writer: Kind, reader: Kind) -> bool {
    use Kind::*;
    matches!(
        (writer, reader),
        (Int, Long | Float | Double)
            | (Long, Float | Double)
            | (Float, Double)
            | (String, Bytes)
            | (Bytes, String)
    )
}

struct Resolver<'a> {
    writer_names: Names<'a>,
    reader_names: Names<'a>,
    /// Record pairs being resolved (recursive schemas resolve to themselves).
    in_progress: HashSet<(Name, Name)>,
}

/// `Ok` if `reader` can read everything written with `writer`; else where it fails.
pub(super) fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    let mut writer_names = Names::new();
    collect_names(writer, &mut writer_names);
    let mut reader_names = Names::new();
    collect_names(reader, &mut reader_names);
    Resolver {
        writer_names,
        reader_names,
        in_progress: HashSet::new(),
    }
    .resolve(writer, reader, "")
}

impl<'a> Resolver<'a> {
    fn deref_writer(&self, s: &'a Schema) -> Result<&'a Schema, String> {
        match s {
            Schema::Ref { name } => self
                .writer_names
                .get(name)
                .copied()
                .ok_or_else(|| format!("unknown type {name} in the writer's schema")),
            other => Ok(other),
        }
    }

    fn deref_reader(&self, s: &'a Schema) -> Result<&'a Schema, String> {
        match s {
            Schema::Ref { name } => self
                .reader_names
                .get(name)
                .copied()
                .ok_or_else(|| format!("unknown type {name} in the reader's schema")),
            other => Ok(other),
        }
    }

    fn resolve(&mut self, writer: &'a Schema, reader: &'a Schema, at: &str) -> Result<(), String> {
        let (w, r) = (self.deref_writer(writer)?, self.deref_reader(reader)?);
        let (wk, rk) = (kind(w), kind(r));
        let here = || {
            if at.is_empty() {
                "the top level".to_owned()
            } else {
                format!("field `{at}`")
            }
        };
        if let Schema::Union(wu) = w {
            for branch in wu.variants() {
                self.resolve(branch, r, at)?;
            }
            return Ok(());
        }
        if wk == rk {
            return match (w, r) {
                (Schema::Array(wa), Schema::Array(ra)) => self.resolve(&wa.items, &ra.items, at),
                (Schema::Map(wm), Schema::Map(rm)) => self.resolve(&wm.types, &rm.types, at),
                (Schema::Record(wr), Schema::Record(rr)) => self.resolve_records(wr, rr, at),
                _ => match (named(w), named(r)) {
                    (Some((wn, wsize)), Some((rn, rsize))) => {
                        if wn != rn {
                            Err(format!(
                                "{}: the writer's {} and the reader's {} do not match",
                                here(),
                                wn.fullname(None),
                                rn.fullname(None)
                            ))
                        } else if wsize != rsize {
                            Err(format!(
                                "{}: fixed {} changed size",
                                here(),
                                wn.fullname(None)
                            ))
                        } else {
                            Ok(())
                        }
                    }
                    _ => Ok(()),
                },
            };
        }
        if let Schema::Union(ru) = r {
            return match self.matching_branch(w, ru.variants())? {
                Some(branch) => self.resolve(w, branch, at),
                None => Err(format!(
                    "{}: no branch of the reader's union reads the writer's {wk:?}",
                    here()
                )),
            };
        }
        if promotes(wk, rk) {
            return Ok(());
        }
        Err(format!(
            "{}: the writer's {wk:?} cannot be read as {rk:?}",
            here()
        ))
    }

    fn resolve_records(
        &mut self,
        writer: &'a RecordSchema,
        reader: &'a RecordSchema,
        at: &str,
    ) -> Result<(), String> {
        let pair = (writer.name.clone(), reader.name.clone());
        if !self.in_progress.insert(pair.clone()) {
            return Ok(());
        }
        let result = (|| {
            for rf in &reader.fields {
                let path = if at.is_empty() {
                    rf.name.clone()
                } else {
                    format!("{at}.{}", rf.name)
                };
                match writer.fields.iter().find(|wf| wf.name == rf.name) {
                    Some(wf) => self.resolve(&wf.schema, &rf.schema, &path)?,
                    None if rf.default.is_some() => {}
                    None => {
                        return Err(format!(
                            "field `{path}` is missing from the written data and has no default"
                        ));
                    }
                }
            }
            Ok(())
        })();
        self.in_progress.remove(&pair);
        result
    }

    /// The reader union's branch that reads `writer` (not a union): the first of the same
    /// type — for named types the one with the same full name, for records else the first
    /// that resolves field by field (preferring the same short name) — else the first the
    /// writer's type promotes to.
    fn matching_branch(
        &mut self,
        writer: &'a Schema,
        branches: &'a [Schema],
    ) -> Result<Option<&'a Schema>, String> {
        let wk = kind(writer);
        let mut structure_match: Option<&'a Schema> = None;
        for b in branches {
            let b = self.deref_reader(b)?;
            if kind(b) != wk {
                continue;
            }
            match (named(writer), named(b)) {
                (Some((wn, _)), Some((bn, _))) => {
                    if wn == bn {
                        return Ok(Some(b));
                    }
                    if let (Schema::Record(wr), Schema::Record(br)) = (writer, b)
                        && self.resolve_records(wr, br, "").is_ok()
                        && (structure_match.is_none() || wn.name() == bn.name())
                    {
                        structure_match = Some(b);
                    }
                }
                _ => return Ok(Some(b)),
            }
        }
        if structure_match.is_some() {
            return Ok(structure_match);
        }
        for b in branches {
            let b = self.deref_reader(b)?;
            if promotes(wk, kind(b)) {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }
}
