//! Bucket lists resolved in one pass. A 1,000-bucket answer is some 10,000 fields, and the
//! generic executor spends a boxed future and a `FuturesUnordered` task on each field and
//! each list item — about a microsecond apiece, several times the query itself.
//!
//! [`Buckets`] is the GraphQL type `[Bucket!]!` (it registers exactly what `Vec<Bucket>`
//! does, so the schema is unchanged). When the selection under it is plain — fields only,
//! no fragment and no directive, each response key once, arguments written as literals
//! and valid — it builds the answer directly, with the scalar encodings the executor uses
//! (`ScalarType::to_value`), in selection order. Anything else (a fragment, `@include`, a
//! variable argument, an invalid percentile that must become a located error) goes through
//! the executor unchanged; the two give the same answer, and `tests/graphql.rs` compares
//! them. The schema registers no extension (`mod.rs` builds it): one that hooks each
//! field's resolution would need every field to go through the executor.
//!
//! The answer is written as JSON text, not as a tree of `Value`s: a tree of 1,000 objects
//! costs an `IndexMap` (hashed keys) per object, and as much again to serialize and drop.
//! The text goes into the request's [`Splices`], and the field's value in the response is
//! a marker string, which [`Splices::apply`] replaces with the text once the response is
//! serialized. The marker carries a random nonce, fresh per HTTP request, so no string a
//! client sends or a store holds can pass for one. Without [`Splices`] in the request's
//! data (a WebSocket operation, or a document that selects a response key twice — see
//! [`keys_once`]), the executor answers.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{ExecutableDocument, Field, Selection, SelectionSet};
use async_graphql::registry::Registry;
use async_graphql::{
    ContextSelectionSet, InputType, Name, OutputType, Positioned, ScalarType, ServerResult, Value,
};

use super::schema::{AggFn, AggValue, Bucket};

/// The buckets of an answer, as `[Bucket!]!`.
pub struct Buckets(pub Vec<Bucket>);

impl OutputType for Buckets {
    fn type_name() -> Cow<'static, str> {
        <Vec<Bucket> as OutputType>::type_name()
    }

    fn qualified_type_name() -> String {
        <Vec<Bucket> as OutputType>::qualified_type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <Vec<Bucket> as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        let direct = ctx.data_opt::<Arc<Splices>>().zip(picks(&ctx.item.node));
        match direct {
            Some((splices, picks)) => {
                // Some 300 bytes a bucket with the usual fields.
                let mut out = Vec::with_capacity(64 + self.0.len() * 320);
                objects(&mut out, &self.0, &picks, Pick::write);
                Ok(Value::String(splices.add(out)))
            }
            None => self.0.resolve(ctx, field).await,
        }
    }
}

/// Whether no selection set of `doc` selects a response key twice, the fragments spread
/// into it included. The executor resolves each occurrence of a repeated key on its own
/// and merges the values — objects with objects, lists with lists — and a marker string
/// merges with nothing: the other occurrence's fields would be dropped. A request whose
/// document repeats a key therefore gets no [`Splices`]. At most [`KEYS_WALK_CAP`]
/// selections are looked at; a larger document (or a fragment cycle, which validation
/// refuses later) answers `false`.
pub fn keys_once(doc: &ExecutableDocument) -> bool {
    let mut budget = KEYS_WALK_CAP;
    doc.operations
        .iter()
        .all(|(_, op)| set_keys_once(doc, &op.node.selection_set.node, &mut budget))
}

/// Selections [`keys_once`] looks at, at most.
const KEYS_WALK_CAP: usize = 10_000;

fn set_keys_once(doc: &ExecutableDocument, set: &SelectionSet, budget: &mut usize) -> bool {
    let (mut keys, mut fields) = (std::collections::HashSet::new(), Vec::new());
    collect_keys(doc, set, &mut keys, &mut fields, budget, 0)
        && fields
            .into_iter()
            .all(|f| set_keys_once(doc, &f.selection_set.node, budget))
}

/// The fields `set` selects, fragments flattened, into `fields`; `false` on a key seen
/// before, a fragment that does not exist, or the walk's bounds.
fn collect_keys<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    keys: &mut std::collections::HashSet<&'a str>,
    fields: &mut Vec<&'a Field>,
    budget: &mut usize,
    depth: usize,
) -> bool {
    for sel in &set.items {
        if *budget == 0 || depth > 64 {
            return false;
        }
        *budget -= 1;
        let inner = match &sel.node {
            Selection::Field(f) => {
                if !keys.insert(f.node.response_key().node.as_str()) {
                    return false;
                }
                fields.push(&f.node);
                continue;
            }
            Selection::FragmentSpread(s) => match doc.fragments.get(&s.node.fragment_name.node) {
                Some(frag) => &frag.node.selection_set.node,
                None => return false,
            },
            Selection::InlineFragment(i) => &i.node.selection_set.node,
        };
        if !collect_keys(doc, inner, keys, fields, budget, depth + 1) {
            return false;
        }
    }
    true
}

/// The JSON texts of one HTTP request's bucket lists, each standing in the response as a
/// marker string until [`Splices::apply`].
pub struct Splices {
    /// `aether-splice-<random>-`, then the text's index.
    prefix: String,
    texts: Mutex<Vec<Vec<u8>>>,
}

impl Splices {
    pub fn new() -> Arc<Self> {
        Arc::new(Splices {
            prefix: format!("aether-splice-{}-", uuid::Uuid::new_v4().simple()),
            texts: Mutex::new(Vec::new()),
        })
    }

    /// Keeps `json` and returns the marker that stands for it.
    fn add(&self, json: Vec<u8>) -> String {
        let mut texts = self.texts.lock().unwrap_or_else(|e| e.into_inner());
        texts.push(json);
        format!("{}{}", self.prefix, texts.len() - 1)
    }

    /// `serialized` (compact JSON) with every marker string — quotes included — replaced by
    /// its text. Markers are ASCII letters, digits and `-`, so JSON writes them unescaped;
    /// only a whole string value is a marker, never the end of a longer string.
    pub fn apply(&self, serialized: Vec<u8>) -> Vec<u8> {
        let texts = self.texts.lock().unwrap_or_else(|e| e.into_inner());
        if texts.is_empty() {
            return serialized;
        }
        let quoted = format!("\"{}", self.prefix);
        let finder = memchr::memmem::Finder::new(quoted.as_bytes());
        let extra: usize = texts.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(serialized.len() + extra);
        let mut rest = &serialized[..];
        while let Some(at) = finder.find(rest) {
            let after = &rest[at + quoted.len()..];
            let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
            let text = std::str::from_utf8(&after[..digits])
                .ok()
                .and_then(|d| d.parse::<usize>().ok())
                .and_then(|i| texts.get(i));
            // A string value begins after `:`, `[` or `,` (serde_json writes no spaces); a
            // quote inside a string is escaped, so one after a backslash is not a marker's.
            let before = match at {
                0 => out.last(),
                _ => rest.get(at - 1),
            };
            let starts_value = matches!(before, Some(b':' | b'[' | b','));
            match (text, after.get(digits)) {
                (Some(text), Some(b'"')) if starts_value => {
                    out.extend_from_slice(&rest[..at]);
                    out.extend_from_slice(text);
                    rest = &after[digits + 1..];
                }
                // Not a marker of ours after all: kept as it is.
                _ => {
                    out.extend_from_slice(&rest[..at + quoted.len()]);
                    rest = after;
                }
            }
        }
        out.extend_from_slice(rest);
        out
    }
}

/// A JSON list of objects, one per item, each with the picked fields under their response
/// keys in selection order.
fn objects<T, P>(
    out: &mut Vec<u8>,
    items: &[T],
    picks: &[(Name, P)],
    write: impl Fn(&P, &T, &mut Vec<u8>),
) {
    // Each key's `"key":` (`,"key":` after the first), escaped once for all items.
    let keys: Vec<Vec<u8>> = picks
        .iter()
        .enumerate()
        .map(|(j, (key, _))| {
            let mut k = if j == 0 { Vec::new() } else { vec![b','] };
            string(&mut k, key.as_str());
            k.push(b':');
            k
        })
        .collect();
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        for (key, (_, pick)) in keys.iter().zip(picks) {
            out.extend_from_slice(key);
            write(pick, item, out);
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// A JSON string, escaped as serde_json (the executor's serializer) escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// A field of `Bucket` (or of its `values`) the direct path answers.
enum Pick {
    Typename,
    Start,
    End,
    Tier,
    Count,
    Agg(AggFn),
    Percentile(f64),
    Values(Vec<(Name, ValuePick)>),
}

enum ValuePick {
    Typename,
    Fn,
    Value,
}

impl Pick {
    fn write(&self, b: &Bucket, out: &mut Vec<u8>) {
        match self {
            Pick::Typename => string(out, "Bucket"),
            Pick::Start => value(out, &ScalarType::to_value(&b.start)),
            Pick::End => value(out, &ScalarType::to_value(&b.end)),
            Pick::Tier => string(out, b.tier),
            Pick::Count => value(out, &ScalarType::to_value(&b.moments.count())),
            Pick::Agg(f) => float(out, b.agg(*f)),
            Pick::Percentile(p) => float(out, b.sketch.quantile(*p)),
            Pick::Values(picks) => objects(out, &b.values, picks, ValuePick::write),
        }
    }
}

impl ValuePick {
    fn write(&self, v: &AggValue, out: &mut Vec<u8>) {
        match self {
            ValuePick::Typename => string(out, "AggValue"),
            ValuePick::Fn => value(out, &InputType::to_value(&v.r#fn)),
            ValuePick::Value => float(out, v.value),
        }
    }
}

/// A scalar as the executor encodes it (`to_value`), then serializes it.
fn value(out: &mut Vec<u8>, v: &Value) {
    serde_json::to_writer(out, v).expect("writing to a Vec cannot fail");
}

/// `Option<f64>` as the executor writes it: `to_value` gives a number for a finite float and
/// null otherwise, and serde_json writes a finite `f64` as that number does.
fn float(out: &mut Vec<u8>, x: Option<f64>) {
    match x {
        Some(x) if x.is_finite() => {
            serde_json::to_writer(out, &x).expect("writing to a Vec cannot fail")
        }
        _ => out.extend_from_slice(b"null"),
    }
}

/// The plain fields of `set`, with their response keys: `None` for anything else.
fn plain(set: &SelectionSet) -> Option<Vec<(Name, &Field)>> {
    let mut out: Vec<(Name, &Field)> = Vec::with_capacity(set.items.len());
    for item in &set.items {
        let Selection::Field(f) = &item.node else {
            return None;
        };
        let key = &f.node.response_key().node;
        if !f.node.directives.is_empty() || out.iter().any(|(k, _)| k == key) {
            return None;
        }
        out.push((key.clone(), &f.node));
    }
    Some(out)
}

/// What to answer for each field of a `Bucket` selection, or `None` if the executor must.
fn picks(set: &SelectionSet) -> Option<Vec<(Name, Pick)>> {
    plain(set)?
        .into_iter()
        .map(|(key, f)| {
            let no_args = f.arguments.is_empty();
            let pick = match f.name.node.as_str() {
                "__typename" if no_args => Pick::Typename,
                "start" if no_args => Pick::Start,
                "end" if no_args => Pick::End,
                "tier" if no_args => Pick::Tier,
                "count" if no_args => Pick::Count,
                "sum" if no_args => Pick::Agg(AggFn::Sum),
                "mean" if no_args => Pick::Agg(AggFn::Mean),
                "min" if no_args => Pick::Agg(AggFn::Min),
                "max" if no_args => Pick::Agg(AggFn::Max),
                "first" if no_args => Pick::Agg(AggFn::First),
                "last" if no_args => Pick::Agg(AggFn::Last),
                "variance" if no_args => Pick::Agg(AggFn::Variance),
                "stddev" if no_args => Pick::Agg(AggFn::Stddev),
                "percentile" => Pick::Percentile(literal_quantile(f)?),
                "values" if no_args => Pick::Values(value_picks(&f.selection_set.node)?),
                _ => return None,
            };
            Some((key, pick))
        })
        .collect()
}

fn value_picks(set: &SelectionSet) -> Option<Vec<(Name, ValuePick)>> {
    plain(set)?
        .into_iter()
        .map(|(key, f)| {
            if !f.arguments.is_empty() {
                return None;
            }
            let pick = match f.name.node.as_str() {
                "__typename" => ValuePick::Typename,
                "fn" => ValuePick::Fn,
                "value" => ValuePick::Value,
                _ => return None,
            };
            Some((key, pick))
        })
        .collect()
}

/// `percentile(p: <literal>)` with `p` a valid quantile: the only argument it takes.
fn literal_quantile(f: &Field) -> Option<f64> {
    let [(name, value)] = f.arguments.as_slice() else {
        return None;
    };
    let p = match (name.node.as_str(), value.node.clone().into_const()?) {
        ("p", Value::Number(n)) => n.as_f64()?,
        _ => return None,
    };
    super::schema::check_quantile(p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_replaced_by_their_texts_and_nothing_else() {
        let s = Splices::new();
        let a = s.add(b"[1,2]".to_vec());
        let b = s.add(b"[]".to_vec());
        let other = Splices::new().add(b"[3]".to_vec());
        let body = serde_json::json!({
            "x": b,
            "y": [a, "aether-splice-", format!("{}9", s.prefix), other, format!("{a}x")],
            // A string that ends in a quote and a marker: its quote is escaped, so it is
            // not where a string value begins.
            "z": format!("x\"{a}"),
        });
        let got = s.apply(serde_json::to_vec(&body).unwrap());
        let want = format!(
            r#"{{"x":[],"y":[[1,2],"aether-splice-","{p}9","{other}","{a}x"],"z":"x\"{a}"}}"#,
            p = s.prefix
        );
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }

    #[test]
    fn without_markers_the_text_is_unchanged() {
        let s = Splices::new();
        let text = br#"{"data":null}"#.to_vec();
        assert_eq!(s.apply(text.clone()), text);
        s.add(b"[1]".to_vec());
        assert_eq!(s.apply(text.clone()), text);
    }
}
