//! What a GraphQL request will cost, computed before anything runs, from its parsed
//! document and its variables.
//!
//! The unit is about one stored record read or one value returned: a rollup bucket read, an
//! output bucket's aggregate, an event, a row, or [`RAW_POINTS_PER_UNIT`] raw points decoded.
//! A field's cost follows its arguments — series × ⌈range / step⌉ × aggregates × the work
//! of the tier that serves the step, bounded by the points the series really holds in the
//! range (its known counts, asked of the store before the estimate) — and a list multiplies
//! what is selected inside it. Aliases and fragments are expanded, so they cannot hide
//! work: 100 aliases of a field cost 100 times the field. Limits on depth, fields and
//! aliases hold whatever the cost; a batch is costed as a whole by the caller.

use std::collections::{BTreeSet, HashMap};

use async_graphql::parser::types::{
    ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Value, Variables};

use super::scalars::parse_instant;
use super::schema::RAW_POINTS_PER_UNIT;
use crate::telemetry::browse::Known;
use crate::telemetry::command::{MAX_TS, MIN_TS};

const MINUTE_NS: i64 = 60_000_000_000;
const HOUR_NS: i64 = 60 * MINUTE_NS;

/// Rows a list returns when the request does not say (the resolvers' defaults).
const DEFAULT_PAGE: u64 = 100;
/// `points(limit)`'s default and cap.
pub const DEFAULT_POINTS: u64 = 1000;
pub const MAX_POINTS_PAGE: u64 = 10_000;

/// Series ranges whose counts one request (a batch: all of its requests) may look up: one
/// that reads more is refused.
pub const MAX_NEEDS: usize = 64;
/// Series of one list argument the estimate reads (the resolvers take 16 or 64 at most).
const MAX_SERIES_PER_FIELD: usize = 64;

/// The limits one request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_cost: u64,
    /// Deepest selection, introspection aside.
    pub max_depth: usize,
    pub max_aliases: usize,
    pub max_fields: usize,
    /// Deepest selection inside `__schema`/`__type` (counted from the root): GraphiQL's
    /// schema query nests type references nine deep, 15 fields in all.
    pub max_introspection_depth: usize,
    /// What the introspection lists of the schema served hold at most.
    pub introspection: IntrospectionSizes,
}

/// Introspection fields deeper than this are refused (see [`Limits`]): GraphiQL's and
/// graphql-js' schema query reaches 15.
pub const MAX_INTROSPECTION_DEPTH: usize = 16;

/// The longest of each introspection list a schema has: what one item selected inside such a
/// list is multiplied by. Only lists multiply (`ofType` or `type` is one object): the
/// nine-deep type references of GraphiQL's schema query add to its cost, they do not
/// multiply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntrospectionSizes {
    /// `types`, and also `interfaces` and `possibleTypes` (they name some of the types).
    pub types: u64,
    /// `fields` of one type.
    pub fields: u64,
    /// `args` of one field or directive.
    pub args: u64,
    /// `inputFields` of one input type.
    pub input_fields: u64,
    /// `enumValues` of one enum.
    pub enum_values: u64,
    /// `directives`.
    pub directives: u64,
}

impl IntrospectionSizes {
    /// Sizes for a schema not measured: a hundred of everything.
    pub const GENEROUS: IntrospectionSizes = IntrospectionSizes {
        types: 100,
        fields: 100,
        args: 100,
        input_fields: 100,
        enum_values: 100,
        directives: 100,
    };

    /// The sizes of the schema `sdl` describes (as `Schema::sdl` prints it), with the
    /// introspection types' own (`__Type` has 11 fields, `__DirectiveLocation` 19 values)
    /// and the built-in scalars and directives, which it leaves out. `GENEROUS` if it does
    /// not parse.
    pub fn of_sdl(sdl: &str) -> Self {
        use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
        let Ok(doc) = async_graphql::parser::parse_schema(sdl) else {
            return Self::GENEROUS;
        };
        // __Schema, __Type, __TypeKind, __Field, __InputValue, __EnumValue, __Directive,
        // __DirectiveLocation; String, Int, Float, Boolean, ID; @include, @skip,
        // @deprecated, @specifiedBy, @oneOf.
        let mut n = IntrospectionSizes {
            types: 8 + 5,
            fields: 11,
            args: 1,
            input_fields: 1,
            enum_values: 19,
            directives: 5,
        };
        let at_least = |a: &mut u64, b: usize| *a = (*a).max(b as u64);
        for d in &doc.definitions {
            match d {
                TypeSystemDefinition::Type(t) => {
                    n.types += 1;
                    match &t.node.kind {
                        TypeKind::Object(o) => {
                            at_least(&mut n.fields, o.fields.len());
                            for f in &o.fields {
                                at_least(&mut n.args, f.node.arguments.len());
                            }
                        }
                        TypeKind::Interface(i) => {
                            at_least(&mut n.fields, i.fields.len());
                            for f in &i.fields {
                                at_least(&mut n.args, f.node.arguments.len());
                            }
                        }
                        TypeKind::Enum(e) => at_least(&mut n.enum_values, e.values.len()),
                        TypeKind::InputObject(i) => at_least(&mut n.input_fields, i.fields.len()),
                        TypeKind::Scalar | TypeKind::Union(_) => {}
                    }
                }
                TypeSystemDefinition::Directive(d) => {
                    n.directives += 1;
                    at_least(&mut n.args, d.node.arguments.len());
                }
                TypeSystemDefinition::Schema(_) => {}
            }
        }
        n
    }

    /// Items of the introspection field `name` (1: not a list).
    fn items(&self, name: &str) -> u64 {
        match name {
            "types" | "interfaces" | "possibleTypes" => self.types,
            "fields" => self.fields,
            "args" => self.args,
            "inputFields" => self.input_fields,
            "enumValues" => self.enum_values,
            "directives" => self.directives,
            _ => 1,
        }
    }
}

/// A series' points in a range, as the store knows them (an estimate).
pub type Counts = HashMap<(String, i64, i64), Known>;

/// One request's estimate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimate {
    pub requested: u64,
    /// The field (response path) that costs most, and its cost.
    pub top: Option<(String, u64)>,
    pub fields: usize,
    pub aliases: usize,
    /// Deepest selection, introspection aside.
    pub depth: usize,
    /// Deepest selection inside `__schema`/`__type`, counted from the root.
    pub introspection_depth: usize,
}

/// Why a request is refused before it runs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("query cost {cost} exceeds the limit {limit}; the most expensive field is {field} ({field_cost})")]
    TooCostly {
        cost: u64,
        limit: u64,
        field: String,
        field_cost: u64,
    },
    #[error("{what} {got} exceeds the limit {limit}")]
    TooLarge {
        what: &'static str,
        got: usize,
        limit: usize,
    },
    #[error("fragment {0} spreads itself")]
    FragmentCycle(String),
    #[error("the points of series {0:?} were not counted before the query")]
    Unknown(String),
}

/// A request (or a batch, as a whole) whose estimate reads `ranges` distinct series ranges:
/// refused past [`MAX_NEEDS`].
pub fn check_ranges(ranges: usize) -> Result<(), Refusal> {
    if ranges > MAX_NEEDS {
        return Err(Refusal::TooLarge {
            what: "distinct series ranges",
            got: ranges,
            limit: MAX_NEEDS,
        });
    }
    Ok(())
}

/// The series ranges whose known counts the estimate needs (first pass). It walks as far
/// as [`estimate`] will under the same `max_fields`, so that every range the estimate
/// costs has been looked up.
pub fn needs(
    doc: &ExecutableDocument,
    op: Option<&str>,
    vars: &Variables,
    max_fields: usize,
) -> BTreeSet<(String, i64, i64)> {
    let mut needs = BTreeSet::new();
    for o in operations(doc, op) {
        let vars = with_defaults(o, vars);
        let mut w = Walker::new(doc, &vars, None, max_fields, IntrospectionSizes::GENEROUS);
        w.walk_set(&o.selection_set.node, Scope::Root, 1, "");
        needs.append(&mut w.needs);
    }
    needs
}

/// The estimate of the operation a request runs (`op`: its operationName; with none, and
/// several operations in the document, the most expensive), checked against `limits`.
pub fn estimate(
    doc: &ExecutableDocument,
    op: Option<&str>,
    vars: &Variables,
    counts: &Counts,
    limits: &Limits,
) -> Result<Estimate, Refusal> {
    let mut best = Estimate::default();
    for o in operations(doc, op) {
        let vars = with_defaults(o, vars);
        let mut w = Walker::new(
            doc,
            &vars,
            Some(counts),
            limits.max_fields,
            limits.introspection,
        );
        let cost = w.walk_set(&o.selection_set.node, Scope::Root, 1, "");
        if let Some(cycle) = w.cycle {
            return Err(Refusal::FragmentCycle(cycle));
        }
        if w.spreads > WALK_FIELD_CAP {
            return Err(Refusal::TooLarge {
                what: "fragment spreads",
                got: w.spreads,
                limit: WALK_FIELD_CAP,
            });
        }
        check_ranges(w.needs.len())?;
        if let Some(missing) = w.needs.iter().find(|k| !counts.contains_key(*k)) {
            // Within the cap every range was looked up: a defect, refused rather than
            // costed as empty.
            return Err(Refusal::Unknown(missing.0.clone()));
        }
        let e = Estimate {
            requested: cost,
            top: w.top,
            fields: w.fields,
            aliases: w.aliases,
            depth: w.max_plain_depth,
            introspection_depth: w.max_introspection_depth,
        };
        if e.requested >= best.requested {
            best = e;
        }
    }
    check(&best, limits)?;
    Ok(best)
}

/// The limits of one request (or, with the sum of a batch's costs, of a batch).
pub fn check(e: &Estimate, limits: &Limits) -> Result<(), Refusal> {
    let large = |what, got: usize, limit: usize| {
        (got > limit).then_some(Refusal::TooLarge { what, got, limit })
    };
    if let Some(r) = large("depth", e.depth, limits.max_depth)
        .or_else(|| {
            large(
                "introspection depth",
                e.introspection_depth,
                limits.max_introspection_depth,
            )
        })
        .or_else(|| large("aliases", e.aliases, limits.max_aliases))
        .or_else(|| large("fields", e.fields, limits.max_fields))
    {
        return Err(r);
    }
    if e.requested > limits.max_cost {
        let (field, field_cost) = e.top.clone().unwrap_or_default();
        return Err(Refusal::TooCostly {
            cost: e.requested,
            limit: limits.max_cost,
            field,
            field_cost,
        });
    }
    Ok(())
}

/// Fields one walk visits at most before it stops (the first pass, which knows no limits):
/// fragments that spread others twice over would otherwise take exponential time.
const WALK_FIELD_CAP: usize = 10_000;

/// The request's variables, with the operation's defaults for those it leaves out (as the
/// executor sees them).
fn with_defaults(o: &OperationDefinition, vars: &Variables) -> Variables {
    let mut all = vars.clone();
    for d in &o.variable_definitions {
        let name = &d.node.name.node;
        if !all.contains_key(name) {
            if let Some(v) = d.node.default_value() {
                all.insert(name.clone(), v.clone());
            }
        }
    }
    all
}

fn operations<'a>(
    doc: &'a ExecutableDocument,
    op: Option<&'a str>,
) -> impl Iterator<Item = &'a OperationDefinition> + 'a {
    doc.operations
        .iter()
        .filter(move |(name, _)| match (op, name) {
            (Some(want), Some(n)) => n.as_str() == want,
            _ => true,
        })
        .map(|(_, o)| &o.node)
}

/// Where a selection set sits: what its fields mean.
#[derive(Clone, Debug)]
enum Scope {
    Root,
    /// Inside `telemetry(series, range)`: the series' points in range.
    Telemetry {
        start: i64,
        end: i64,
        known: Known,
    },
    /// Inside a bucket or a summary: only percentiles cost (per item).
    Stats,
    Workflow,
    /// Inside `__schema`/`__type`.
    Introspection,
    Other,
}

struct Walker<'a> {
    doc: &'a ExecutableDocument,
    vars: &'a Variables,
    /// `None`: the first pass, collecting `needs`.
    counts: Option<&'a Counts>,
    needs: BTreeSet<(String, i64, i64)>,
    fields: usize,
    aliases: usize,
    depth: usize,
    /// Deepest field outside introspection.
    max_plain_depth: usize,
    /// Deepest field inside introspection (from the root).
    max_introspection_depth: usize,
    /// Introspection fields enclosing the one being costed.
    introspecting: usize,
    sizes: IntrospectionSizes,
    top: Option<(String, u64)>,
    /// The cost of the fields selected inside the field being costed (to tell its own).
    inner: u64,
    /// Past this many fields the walk stops: the request is refused on its field count.
    field_cap: usize,
    /// Fragment spreads expanded; past [`WALK_FIELD_CAP`] the walk stops and the request is
    /// refused (spreads that end in cycles select no field, so fields alone do not bound it).
    spreads: usize,
    spreading: Vec<String>,
    cycle: Option<String>,
}

impl<'a> Walker<'a> {
    fn new(
        doc: &'a ExecutableDocument,
        vars: &'a Variables,
        counts: Option<&'a Counts>,
        field_cap: usize,
        sizes: IntrospectionSizes,
    ) -> Self {
        Walker {
            max_plain_depth: 0,
            max_introspection_depth: 0,
            introspecting: 0,
            sizes,
            field_cap,
            spreads: 0,
            doc,
            vars,
            counts,
            needs: BTreeSet::new(),
            fields: 0,
            aliases: 0,
            depth: 0,
            top: None,
            inner: 0,
            spreading: Vec::new(),
            cycle: None,
        }
    }

    /// The cost of a selection set in `scope`, each item selected `times` times.
    fn walk_set(&mut self, set: &'a SelectionSet, scope: Scope, times: u64, path: &str) -> u64 {
        let mut total = 0u64;
        for item in &set.items {
            if self.fields > self.field_cap || self.spreads > WALK_FIELD_CAP {
                break;
            }
            let cost = match &item.node {
                Selection::Field(f) => self.field(&f.node, scope.clone(), times, path),
                Selection::InlineFragment(i) => {
                    self.walk_set(&i.node.selection_set.node, scope.clone(), times, path)
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.to_string();
                    if self.spreading.contains(&name) {
                        self.cycle.get_or_insert(name);
                        continue;
                    }
                    // Depth bounds the expansion: past the limit the request is refused anyway.
                    if self.depth > 64 {
                        continue;
                    }
                    let Some(frag) = self.doc.fragments.get(&s.node.fragment_name.node) else {
                        continue;
                    };
                    self.spreads += 1;
                    self.spreading.push(name);
                    let c =
                        self.walk_set(&frag.node.selection_set.node, scope.clone(), times, path);
                    self.spreading.pop();
                    c
                }
            };
            total = total.saturating_add(cost);
        }
        total
    }

    fn field(&mut self, f: &'a Field, scope: Scope, times: u64, path: &str) -> u64 {
        self.fields += 1;
        if f.alias.is_some() {
            self.aliases += 1;
        }
        let key = f.response_key().node.as_str();
        let path = if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        };
        self.depth += 1;
        let introspection = self.introspecting > 0 || matches!(scope, Scope::Introspection);
        let opens = matches!(f.name.node.as_str(), "__schema" | "__type");
        if introspection || opens {
            self.max_introspection_depth = self.max_introspection_depth.max(self.depth);
        } else {
            self.max_plain_depth = self.max_plain_depth.max(self.depth);
        }
        let outer = std::mem::take(&mut self.inner);
        let cost = if self.depth > 64 {
            0
        } else {
            self.field_cost(f, scope, &path).saturating_mul(times)
        };
        // The most expensive field is the one whose own work costs most (a parent's cost
        // includes what it selects).
        let own = cost.saturating_sub(self.inner);
        self.inner = outer.saturating_add(cost);
        self.depth -= 1;
        if self.top.as_ref().is_none_or(|t| own > t.1) {
            self.top = Some((path, own));
        }
        cost
    }

    fn arg(&self, f: &Field, name: &str) -> Option<Value> {
        let v = f.get_argument(name)?.node.clone();
        v.into_const_with(|var: Name| self.vars.get(&var).cloned().ok_or(()))
            .ok()
            .filter(|v| *v != Value::Null)
    }

    fn uint(&self, f: &Field, name: &str) -> Option<u64> {
        match self.arg(f, name)? {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// A list of strings argument, at most [`MAX_SERIES_PER_FIELD`] of them (the resolvers
    /// refuse longer lists; the estimate need not read counts for them).
    fn strings(&self, f: &Field, name: &str) -> Option<Vec<String>> {
        match self.arg(f, name)? {
            Value::List(l) => Some(
                l.into_iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .take(MAX_SERIES_PER_FIELD)
                    .collect(),
            ),
            // Input coercion makes a single value a list of one.
            Value::String(s) => Some(vec![s]),
            _ => None,
        }
    }

    fn string(&self, f: &Field, name: &str) -> Option<String> {
        match self.arg(f, name)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A range argument's `[start, end)` (`None` when it is not one: the resolver refuses it).
    fn range(&self, f: &Field, name: &str) -> Option<(i64, i64)> {
        let Value::Object(o) = self.arg(f, name)? else {
            return None;
        };
        let at = |k: &str| match o.get(k) {
            Some(Value::String(s)) => parse_instant(s).ok(),
            _ => None,
        };
        Some((at("start")?, at("end")?)).filter(|(s, e)| s < e)
    }

    /// A duration argument in ns (calendar units at their shortest: a month as 28 days).
    fn duration(&self, f: &Field, name: &str) -> Option<i64> {
        let s = self.string(f, name)?;
        let span: jiff::Span = s.trim().parse().ok()?;
        let days = i64::from(span.get_years()) * 365
            + i64::from(span.get_months()) * 28
            + i64::from(span.get_weeks()) * 7
            + i64::from(span.get_days());
        let fixed = span
            .years(0)
            .months(0)
            .weeks(0)
            .days(0)
            .total(jiff::Unit::Nanosecond)
            .ok()? as i64;
        Some(days.saturating_mul(24 * HOUR_NS).saturating_add(fixed)).filter(|n| *n > 0)
    }

    /// The known points of `series` in `[start, end)` (first pass: noted, none). The ranges
    /// are noted in both passes: a request that reads more than [`MAX_NEEDS`] is refused
    /// (the counts are store reads made before anything is admitted, so a request cannot
    /// multiply them), and a range without a count is never costed as empty.
    fn points(&mut self, series: &str, start: i64, end: i64) -> Known {
        let key = (series.to_owned(), start, end);
        let known = self.counts.and_then(|c| c.get(&key).copied());
        // One past the cap is enough to refuse; the walk's field cap bounds the rest.
        if self.needs.len() <= WALK_FIELD_CAP {
            self.needs.insert(key);
        }
        known.unwrap_or_default()
    }

    fn list(&self, f: &Field, name: &str, default: u64, cap: u64) -> u64 {
        self.uint(f, name).unwrap_or(default).min(cap)
    }

    fn field_cost(&mut self, f: &'a Field, scope: Scope, path: &str) -> u64 {
        let name = f.name.node.as_str();
        let children = &f.selection_set.node;
        match (scope, name) {
            (Scope::Root, "telemetry") => {
                let Some(series) = self.string(f, "series") else {
                    return 1;
                };
                let Some((start, end)) = self.range(f, "range") else {
                    return 1;
                };
                let known = self.points(&series, start, end);
                self.walk_set(children, Scope::Telemetry { start, end, known }, 1, path)
                    .saturating_add(1)
            }
            (Scope::Root, "correlate") => {
                let Some(series) = self.strings(f, "series") else {
                    return 1;
                };
                let Some((start, end)) = self.range(f, "range") else {
                    return 1;
                };
                let (read, rows) = match self.duration(f, "every") {
                    // Bucket means from the tiered query path, over the range: what any
                    // tier holds is read, a bucket a row.
                    Some(every) => {
                        let held: Vec<u64> = series
                            .iter()
                            .map(|s| self.points(s, start, end).held)
                            .collect();
                        let read = held.iter().map(|&n| read_units(start, end, every, n)).sum();
                        let rows =
                            span_units(start, end, every).min(held.first().copied().unwrap_or(0));
                        (read, rows)
                    }
                    // Raw points only: the rows' series in the range, the others a tolerance
                    // wider on both sides.
                    None => {
                        let widen = self.duration(f, "tolerance").unwrap_or(0);
                        let (wide_start, wide_end) = (
                            start.saturating_sub(widen).max(MIN_TS),
                            end.saturating_add(widen).min(MAX_TS),
                        );
                        let raw: Vec<u64> = series
                            .iter()
                            .enumerate()
                            .map(|(i, s)| match i {
                                0 => self.points(s, start, end).raw,
                                _ => self.points(s, wide_start, wide_end).raw,
                            })
                            .collect();
                        let read = raw.iter().map(|n| n.div_ceil(RAW_POINTS_PER_UNIT)).sum();
                        (read, raw.first().copied().unwrap_or(0))
                    }
                };
                let rows = rows.min(self.list(f, "limit", DEFAULT_POINTS, MAX_POINTS_PAGE));
                let inner = self.walk_set(children, Scope::Other, 1, path);
                u64::saturating_add(read, rows.saturating_mul(series.len() as u64))
                    .saturating_add(inner)
            }
            (Scope::Root, "series") => {
                let n = self.list(f, "first", DEFAULT_PAGE, 1000);
                n.saturating_add(self.walk_set(children, Scope::Other, 0, path))
            }
            (Scope::Root, "workflow") => {
                1u64.saturating_add(self.walk_set(children, Scope::Workflow, 1, path))
            }
            (Scope::Root, "events") | (Scope::Root, "workflowEvents") => {
                let n = self.list(f, "limit", DEFAULT_PAGE, 10_000);
                n.saturating_add(self.walk_set(children, Scope::Other, 0, path))
            }
            (Scope::Root, "telemetryStream") => {
                let Some(series) = self.strings(f, "series") else {
                    return 1;
                };
                let from = self.string(f, "from").and_then(|s| parse_instant(&s).ok());
                let history: u64 = match from {
                    Some(from) => series
                        .iter()
                        .map(|s| {
                            let raw = self.points(s, from, MAX_TS).raw;
                            raw.div_ceil(RAW_POINTS_PER_UNIT)
                        })
                        .sum(),
                    None => 0,
                };
                history.saturating_add(self.list(f, "batchSize", DEFAULT_PAGE, 100_000))
            }
            (Scope::Telemetry { known, .. }, "points") => {
                let n = self
                    .list(f, "limit", DEFAULT_POINTS, MAX_POINTS_PAGE)
                    .min(known.raw);
                n.saturating_add(n.div_ceil(RAW_POINTS_PER_UNIT))
            }
            (Scope::Telemetry { start, end, known }, "buckets") => {
                let step = match (self.duration(f, "every"), self.uint(f, "points")) {
                    (Some(every), _) => every,
                    (None, Some(p)) if p > 0 => ((end - start) / p as i64).max(1),
                    _ => return 1,
                };
                let buckets = span_units(start, end, step)
                    .min(crate::telemetry::query::MAX_QUERY_BUCKETS as u64);
                let aggs = match self.arg(f, "agg") {
                    Some(Value::List(l)) => l.len().max(1) as u64,
                    _ => 1,
                };
                let inner = self.walk_set(children, Scope::Stats, buckets, path);
                read_units(start, end, step, known.held)
                    .saturating_add(buckets.saturating_mul(aggs))
                    .saturating_add(inner)
            }
            (Scope::Telemetry { start, end, known }, "summary") => read_units(
                start,
                end,
                end - start,
                known.held,
            )
            .saturating_add(self.walk_set(children, Scope::Stats, 1, path)),
            (Scope::Telemetry { known, .. }, "anomalies") => {
                known.held.div_ceil(RAW_POINTS_PER_UNIT).saturating_add(1)
            }
            (Scope::Telemetry { known, .. }, "m4") => known
                .held
                .div_ceil(RAW_POINTS_PER_UNIT)
                .saturating_add(4 * self.list(f, "width", 1, 100_000)),
            (Scope::Telemetry { start, end, known }, "drift") => match self.duration(f, "window") {
                Some(w) => {
                    read_units(start, end, w, known.held).saturating_add(span_units(start, end, w))
                }
                None => 1,
            },
            (Scope::Telemetry { .. }, _) => 0,
            (Scope::Stats, "percentile") => 1,
            (Scope::Stats, "percentiles") => match self.arg(f, "ps") {
                Some(Value::List(l)) => l.len() as u64,
                _ => 1,
            },
            (Scope::Stats, _) => 0,
            (Scope::Workflow, "history") => {
                let n = self.list(f, "first", DEFAULT_PAGE, 10_000);
                n.saturating_add(self.walk_set(children, Scope::Other, 0, path))
            }
            (Scope::Workflow, _) => self.walk_set(children, Scope::Other, 0, path),
            // Introspection: what is selected inside one of its lists (types, fields,
            // arguments, ...) is multiplied by the longest such list the schema has.
            (_, "__schema") | (_, "__type") => {
                self.introspecting += 1;
                let inner = self.walk_set(children, Scope::Introspection, 1, path);
                self.introspecting -= 1;
                1u64.saturating_add(inner)
            }
            (Scope::Introspection, name) => {
                let items = self.sizes.items(name);
                1u64.saturating_add(self.walk_set(children, Scope::Introspection, items, path))
            }
            // Plain fields: one each, and what they select.
            _ => 1u64.saturating_add(self.walk_set(children, Scope::Other, 1, path)),
        }
    }
}

/// Steps of `step` that `[start, end)` touches.
fn span_units(start: i64, end: i64, step: i64) -> u64 {
    let span = (end - start).max(0) as u64;
    span.div_ceil(step.max(1) as u64).max(1)
}

/// Records read to answer `[start, end)` in steps of `step`: hour rollups for steps of an
/// hour or more, minute rollups for a minute or more (plus the edges), raw points below —
/// never more than the points the series holds there (in any tier: rollups answer where raw
/// points expired).
fn read_units(start: i64, end: i64, step: i64, points: u64) -> u64 {
    let raw = points.div_ceil(RAW_POINTS_PER_UNIT);
    let tier = if step >= HOUR_NS {
        span_units(start, end, HOUR_NS).saturating_add(2 * 60)
    } else if step >= MINUTE_NS {
        span_units(start, end, MINUTE_NS).saturating_add(2)
    } else {
        return raw.saturating_add(1);
    };
    tier.min(points).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_cost: 100_000,
        max_depth: 10,
        max_aliases: 30,
        max_fields: 300,
        max_introspection_depth: MAX_INTROSPECTION_DEPTH,
        introspection: IntrospectionSizes::GENEROUS,
    };

    /// The estimate under limits that refuse on depth, aliases and fields only.
    fn est(q: &str, counts: &[(&str, u64)]) -> Result<Estimate, Refusal> {
        est_with(
            q,
            counts,
            &Limits {
                max_cost: u64::MAX,
                ..LIMITS
            },
        )
    }

    fn est_with(q: &str, counts: &[(&str, u64)], limits: &Limits) -> Result<Estimate, Refusal> {
        let known: Vec<(&str, Known)> = counts
            .iter()
            .map(|&(s, n)| (s, Known { raw: n, held: n }))
            .collect();
        est_known(q, &known, limits)
    }

    fn est_known(q: &str, counts: &[(&str, Known)], limits: &Limits) -> Result<Estimate, Refusal> {
        let doc = async_graphql::parser::parse_query(q).unwrap();
        let vars = Variables::default();
        let c: Counts = needs(&doc, None, &vars, limits.max_fields)
            .into_iter()
            .map(|k| {
                let n = counts
                    .iter()
                    .find(|c| c.0 == k.0)
                    .map_or(Known::default(), |c| c.1);
                (k, n)
            })
            .collect();
        estimate(&doc, None, &vars, &c, limits)
    }

    /// Costs multiply down nested lists and saturate at `u64::MAX`; what a field adds to a
    /// saturated cost saturates too. A debug node panicked ("attempt to add with overflow")
    /// on GraphiQL's introspection query, and a release node wrapped the cost round to a
    /// small number that would have been admitted.
    #[test]
    fn a_saturated_cost_stays_saturated_and_is_refused() {
        let deep = |inner: &str| {
            let mut q = inner.to_owned();
            for _ in 0..12 {
                q = format!("ofType {{ name {q} }}");
            }
            q
        };
        let nested = deep("");
        for q in [
            format!("{{ __schema {{ types {{ fields {{ type {{ {nested} }} }} }} }} }}"),
            format!("{{ __type(name: \"Query\") {{ fields {{ args {{ type {{ {nested} }} }} }} }} }}"),
            format!("{{ a: __schema {{ types {{ fields {{ {nested} }} }} }} b: __schema {{ types {{ fields {{ {nested} }} }} }} }}"),
        ] {
            // Two nested lists of 2³² items saturate the cost.
            let n = 1 << 32;
            let huge = IntrospectionSizes {
                types: n,
                fields: n,
                args: n,
                input_fields: n,
                enum_values: n,
                directives: n,
            };
            let deep_ok = Limits {
                max_depth: 64,
                max_introspection_depth: 64,
                introspection: huge,
                ..LIMITS
            };
            let unlimited = Limits {
                max_cost: u64::MAX,
                ..deep_ok
            };
            let e = est_with(&q, &[], &unlimited).unwrap_or_else(|r| panic!("{q}: {r}"));
            assert_eq!(e.requested, u64::MAX, "{q}");
            match est_with(&q, &[], &deep_ok) {
                Err(Refusal::TooCostly { cost, .. }) => assert_eq!(cost, u64::MAX, "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    /// The introspection sizes of the schema this node serves.
    fn served_sizes() -> IntrospectionSizes {
        let schema = async_graphql::Schema::build(
            super::super::schema::Query,
            async_graphql::EmptyMutation,
            super::super::schema::Subscription,
        )
        .finish();
        IntrospectionSizes::of_sdl(&schema.sdl())
    }

    /// GraphiQL's schema query (its page sends it on load) is admitted under the default
    /// limits: it was refused on depth (its type references nest 15 fields deep), and its
    /// cost multiplied by a hundred at every `ofType` saturated.
    #[test]
    fn graphiql_schema_query_is_admitted_under_the_default_limits() {
        let d = crate::config::GraphqlSettings::default();
        let sizes = served_sizes();
        // Measured from the schema, introspection's own types and lists included.
        assert!(sizes.types >= 40 && sizes.types < 200, "{sizes:?}");
        assert!(
            sizes.fields >= 11 && sizes.args >= 1 && sizes.enum_values >= 19,
            "{sizes:?}"
        );
        assert!(sizes.directives >= 5, "{sizes:?}");
        let limits = Limits {
            max_cost: d.max_cost,
            max_depth: d.max_depth,
            max_aliases: d.max_aliases,
            max_fields: d.max_fields,
            max_introspection_depth: MAX_INTROSPECTION_DEPTH,
            introspection: sizes,
        };
        let q = include_str!("../../../tests/fixtures/graphiql-introspection.graphql");
        let e = est_known(q, &[], &limits).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!((e.depth, e.introspection_depth), (0, 15), "{e:?}");
        assert!(e.fields > 200 && e.fields <= d.max_fields, "{e:?}");
        assert!(e.requested > 10_000 && e.requested < d.max_cost, "{e:?}");
    }

    /// Inside introspection only lists multiply (by the schema's longest of each), a chain
    /// of type references adds, and nesting is bounded by its own depth limit.
    #[test]
    fn introspection_lists_multiply_and_type_references_add() {
        let sizes = IntrospectionSizes {
            types: 50,
            fields: 14,
            args: 8,
            input_fields: 3,
            enum_values: 19,
            directives: 5,
        };
        let limits = Limits {
            max_cost: 1_000_000,
            introspection: sizes,
            ..LIMITS
        };
        let cost = |q: &str| est_known(q, &[], &limits).map(|e| e.requested);
        // __schema 1 + types (1 + 50 names).
        assert_eq!(cost("{ __schema { types { name } } }"), Ok(52));
        // __type 1 + fields (1 + 14 × (type 1 + ofType 1 + ofType 1 + name 1)).
        let refs =
            r#"{ __type(name: "Query") { fields { type { ofType { ofType { name } } } } } }"#;
        assert_eq!(cost(refs), Ok(58));
        // __schema 1 + directives (1 + 5 × (args 1 + 8 × name 1)).
        assert_eq!(
            cost("{ __schema { directives { args { name } } } }"),
            Ok(47)
        );
        // Lists within lists: 50 × 14⁴ = 1,920,800 names, and more.
        let lists = "{ __schema { types { fields { type { fields { type { fields { type { \
                     fields { name } } } } } } } } } }";
        match cost(lists) {
            Err(Refusal::TooCostly { cost, .. }) => assert!(cost > 1_920_800, "{cost}"),
            other => panic!("{other:?}"),
        }
        // 17 deep inside introspection: refused on its own depth limit.
        let mut chain = "name".to_owned();
        for _ in 0..15 {
            chain = format!("ofType {{ {chain} }}");
        }
        let deep = format!(r#"{{ __type(name: "Query") {{ {chain} }} }}"#);
        assert!(matches!(
            est_known(&deep, &[], &limits),
            Err(Refusal::TooLarge {
                what: "introspection depth",
                got: 17,
                ..
            })
        ));
    }

    /// A correlation reads the rows' series in the range and the others a tolerance wider
    /// (rows at the edges match points outside): those are the counts it is costed from.
    #[test]
    fn correlations_are_costed_on_the_ranges_they_read() {
        let q = r#"{ correlate(series: ["a", "b"], tolerance: "PT1H",
            range: {start: "2026-01-01T00:00:00Z", end: "2026-01-01T00:00:01Z"}) { rowsTotal } }"#;
        let doc = async_graphql::parser::parse_query(q).unwrap();
        let start = parse_instant("2026-01-01T00:00:00Z").unwrap();
        let (end, hour) = (start + 1_000_000_000, 3_600_000_000_000);
        assert_eq!(
            needs(&doc, None, &Variables::default(), LIMITS.max_fields),
            BTreeSet::from([
                ("a".to_owned(), start, end),
                ("b".to_owned(), start - hour, end + hour)
            ])
        );
    }

    /// With `every`, a correlation joins bucket means from the rollups: where raw points
    /// expired it costs the rollups read and the rows returned, not the nothing raw says.
    #[test]
    fn bucket_correlations_cost_what_the_rollups_hold() {
        let unlimited = Limits {
            max_cost: u64::MAX,
            ..LIMITS
        };
        let q = format!(
            r#"{{ correlate(series: ["a", "b"], tolerance: "PT1M", every: "PT1M", limit: 10000, {DAY}) {{ rowsTotal }} }}"#
        );
        let held = Known {
            raw: 0,
            held: 86_400,
        };
        let est = est_known(&q, &[("a", held), ("b", held)], &unlimited).unwrap();
        // 1,440 minute rollups read per series, 1,440 rows × 2 cells.
        assert!(est.requested >= 2 * 1440 + 1440 * 2, "{est:?}");
    }

    /// Where raw points expired, rollups still answer buckets and summaries: a range the
    /// rollups hold costs the records read, as when its raw points were there — not the
    /// nothing its (zero) raw points would say. Raw reads (pages, correlation rows) cost
    /// only the raw points left.
    #[test]
    fn ranges_only_rollups_hold_cost_the_rollups_they_read() {
        let unlimited = Limits {
            max_cost: u64::MAX,
            ..LIMITS
        };
        let expired = [(
            "a",
            Known {
                raw: 0,
                held: 86_400,
            },
        )];
        for field in [r#"buckets(every: "1m") { start }"#, "summary { mean }"] {
            let q = format!(r#"{{ telemetry(series: "a", {DAY}) {{ {field} }} }}"#);
            let live = est(&q, &[("a", 86_400)]).unwrap();
            let gone = est_known(&q, &expired, &unlimited).unwrap();
            assert_eq!(gone.requested, live.requested, "{field}");
        }
        let q = format!(
            r#"{{ telemetry(series: "a", {DAY}) {{ points(limit: 10000) {{ points {{ value }} }} }} }}"#
        );
        assert!(est_known(&q, &expired, &unlimited).unwrap().requested < 10);
    }

    /// The counts are store reads made before anything runs, so a request looks up at most
    /// `MAX_NEEDS` ranges; one that reads more is refused, not costed as if the ranges past
    /// the cap were empty.
    #[test]
    fn more_ranges_than_are_looked_up_are_refused_not_costed_as_empty() {
        let fields = |n: usize| -> String {
            (0..n)
                .map(|i| {
                    format!(r#"a{i}: telemetry(series: "s{i}", {DAY}) {{ summary {{ mean }} }} "#)
                })
                .collect()
        };
        let counts: Vec<(String, u64)> = (0..70).map(|i| (format!("s{i}"), 86_400)).collect();
        let counts: Vec<(&str, u64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        // Only the range count limits here (a batch reaches it within the alias limit).
        let roomy = Limits {
            max_cost: u64::MAX,
            max_aliases: 1_000,
            max_fields: 10_000,
            ..LIMITS
        };
        let est = |n| est_with(&format!("{{ {} }}", fields(n)), &counts, &roomy);
        let (at_cap, one) = (est(MAX_NEEDS).unwrap(), est(1).unwrap());
        assert_eq!(at_cap.requested, MAX_NEEDS as u64 * one.requested);
        let over = est(70);
        assert!(
            matches!(
                over,
                Err(Refusal::TooLarge {
                    what: "distinct series ranges",
                    got: 70,
                    limit: MAX_NEEDS
                })
            ),
            "{over:?}"
        );
    }

    /// The counting pass walks as far as the costing pass: under a field limit above the
    /// walk's own cap, a range after 10,000 fields is counted and costed, not refused as
    /// uncounted.
    #[test]
    fn a_range_after_ten_thousand_fields_is_counted_when_the_limit_allows_them() {
        let q = format!(
            r#"{{ {} telemetry(series: "a", {DAY}) {{ summary {{ mean }} }} }}"#,
            "__typename ".repeat(10_050)
        );
        let roomy = Limits {
            max_cost: u64::MAX,
            max_fields: 20_000,
            ..LIMITS
        };
        let got = est_with(&q, &[("a", 86_400)], &roomy);
        let alone = est(
            &format!(r#"{{ telemetry(series: "a", {DAY}) {{ summary {{ mean }} }} }}"#),
            &[("a", 86_400)],
        )
        .unwrap();
        assert!(
            got.as_ref()
                .is_ok_and(|e| e.requested >= alone.requested && e.fields > 10_000),
            "{got:?}"
        );
    }

    #[test]
    fn hostile_documents_are_refused_without_walking_them_whole() {
        // 2^40 expansions if walked whole; refused on the field count at once.
        let chain: String = (0..40)
            .map(|i| format!("fragment F{i} on Query {{ ...F{} ...F{} }} ", i + 1, i + 1))
            .collect();
        let q = format!("{{ ...F0 }} {chain} fragment F40 on Query {{ __typename }}");
        let started = std::time::Instant::now();
        let r = est_with(&q, &[], &LIMITS);
        assert!(
            matches!(r, Err(Refusal::TooLarge { what: "fields", .. })),
            "{r:?}"
        );
        // Spreads that end in cycles select no field: bounded by the spreads walked.
        let cyclic: String = (0..40)
            .map(|i| format!("fragment G{i} on Query {{ ...G{} ...G{} }} ", i + 1, i + 1))
            .collect();
        let q = format!("{{ __typename ...G0 }} {cyclic} fragment G40 on Query {{ ...G0 }}");
        let r = est_with(&q, &[], &LIMITS);
        assert!(r.is_err(), "{r:?}");
        println!("refused in {:?}", started.elapsed());
        // Introspection lists multiply what they select.
        let deep = "{ __schema { types { fields { type { fields { type { name } } } } } } }";
        assert!(matches!(
            est_with(deep, &[], &LIMITS),
            Err(Refusal::TooCostly { .. })
        ));
    }

    #[test]
    fn variable_defaults_and_single_values_are_costed_as_the_executor_sees_them() {
        let inline = est(
            &format!(r#"{{ telemetry(series: "a", {DAY}) {{ points(limit: 5000) {{ points {{ value }} }} }} }}"#),
            &[("a", 1_000_000)],
        )
        .unwrap();
        let defaulted = est(
            r#"query($r: TimeRangeInput = {start: "2026-01-01T00:00:00Z", end: "2026-01-02T00:00:00Z"}) {
                telemetry(series: "a", range: $r) { points(limit: 5000) { points { value } } } }"#,
            &[("a", 1_000_000)],
        )
        .unwrap();
        assert_eq!(defaulted.requested, inline.requested);
        assert!(inline.requested > 5000, "{inline:?}");
        let single = est(
            r#"subscription { telemetryStream(series: "a", from: "2026-01-01T00:00:00Z", batchSize: 10) { cursor } }"#,
            &[("a", 1_000_000)],
        )
        .unwrap();
        assert!(
            single.requested > 1_000_000 / RAW_POINTS_PER_UNIT,
            "{single:?}"
        );
    }

    const DAY: &str = r#"range: {start: "2026-01-01T00:00:00Z", end: "2026-01-02T00:00:00Z"}"#;

    #[test]
    fn buckets_cost_by_count_aggregates_and_tier() {
        let minute = est(
            &format!(r#"{{ telemetry(series: "a", {DAY}) {{ buckets(every: "1m", agg: [MEAN, MAX]) {{ start }} }} }}"#),
            &[("a", 10_000_000)],
        )
        .unwrap();
        // 1,440 minute rollups read, 1,440 buckets × 2 aggregates, 1 for the field.
        assert_eq!(minute.requested, 1 + (1440 + 2 + 1) + 1440 * 2);
        let raw = est(
            &format!(
                r#"{{ telemetry(series: "a", {DAY}) {{ buckets(every: "1s") {{ start }} }} }}"#
            ),
            &[("a", 10_000_000)],
        )
        .unwrap();
        assert!(raw.requested > minute.requested * 10, "{raw:?}");
        // A sparse series costs what it holds, not what the range could hold.
        let sparse = est(
            &format!(
                r#"{{ telemetry(series: "a", {DAY}) {{ buckets(every: "1m") {{ start }} }} }}"#
            ),
            &[("a", 10)],
        )
        .unwrap();
        assert!(sparse.requested < 1500, "{sparse:?}");
    }

    #[test]
    fn aliases_and_fragments_multiply_and_are_counted() {
        let one =
            format!(r#"telemetry(series: "a", {DAY}) {{ points(limit: 10000) {{ value }} }}"#);
        let single = est(&format!("{{ {one} }}"), &[("a", 1_000_000)]).unwrap();
        let many: String = (0..20).map(|i| format!("a{i}: {one} ")).collect();
        let aliased = est(&format!("{{ {many} }}"), &[("a", 1_000_000)]).unwrap();
        assert_eq!(aliased.requested, single.requested * 20);
        assert_eq!(aliased.aliases, 20);
        let frag = format!("query {{ ...F ...F }} fragment F on Query {{ {one} }}");
        let spread = est(&frag, &[("a", 1_000_000)]).unwrap();
        assert_eq!(spread.requested, single.requested * 2);
        let cyc = est(
            "query { ...F } fragment F on Query { ...G } fragment G on Query { ...F }",
            &[],
        );
        assert!(matches!(cyc, Err(Refusal::FragmentCycle(_))), "{cyc:?}");
    }

    #[test]
    fn refusals_name_cost_limit_and_field() {
        let many: String = (0..30)
            .map(|i| {
                format!(
                    r#"a{i}: telemetry(series: "a", {DAY}) {{ points(limit: 10000) {{ value }} }} "#
                )
            })
            .collect();
        match est_with(&format!("{{ {many} }}"), &[("a", 1_000_000)], &LIMITS) {
            Err(Refusal::TooCostly {
                cost, limit, field, ..
            }) => {
                assert!(cost > limit);
                assert_eq!(limit, LIMITS.max_cost);
                assert!(
                    field.starts_with('a') && field.ends_with(".points"),
                    "{field}"
                );
            }
            other => panic!("{other:?}"),
        }
        let deep = "{ a { b { c { d { e { f { g { h { i { j { k } } } } } } } } } } }";
        assert!(matches!(
            est(deep, &[]),
            Err(Refusal::TooLarge { what: "depth", .. })
        ));
    }
}
