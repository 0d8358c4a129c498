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

use std::borrow::Cow;

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, Selection, SelectionSet};
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
        match picks(&ctx.item.node).map(|picks| self.direct(&picks)) {
            Some(value) => Ok(value),
            None => self.0.resolve(ctx, field).await,
        }
    }
}

impl Buckets {
    fn direct(&self, picks: &[(Name, Pick)]) -> Value {
        objects(&self.0, picks, Pick::of)
    }
}

/// A list of objects, one per item, each with the picked fields under their response keys
/// in selection order.
fn objects<T, P>(items: &[T], picks: &[(Name, P)], of: impl Fn(&P, &T) -> Value) -> Value {
    Value::List(
        items
            .iter()
            .map(|item| {
                let mut obj = IndexMap::with_capacity(picks.len());
                for (key, pick) in picks {
                    obj.insert(key.clone(), of(pick, item));
                }
                Value::Object(obj)
            })
            .collect(),
    )
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
    fn of(&self, b: &Bucket) -> Value {
        match self {
            Pick::Typename => Value::String("Bucket".to_owned()),
            Pick::Start => ScalarType::to_value(&b.start),
            Pick::End => ScalarType::to_value(&b.end),
            Pick::Tier => Value::String(b.tier.to_owned()),
            Pick::Count => ScalarType::to_value(&b.moments.count()),
            Pick::Agg(f) => float(b.agg(*f)),
            Pick::Percentile(p) => float(b.sketch.quantile(*p)),
            Pick::Values(picks) => objects(&b.values, picks, ValuePick::of),
        }
    }
}

impl ValuePick {
    fn of(&self, v: &AggValue) -> Value {
        match self {
            ValuePick::Typename => Value::String("AggValue".to_owned()),
            ValuePick::Fn => InputType::to_value(&v.r#fn),
            ValuePick::Value => float(v.value),
        }
    }
}

/// `Option<f64>` as the executor writes it (a non-finite float is null).
fn float(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |x| ScalarType::to_value(&x))
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
