//! The caller a verified token names, and what it may do: roles (admin implies writer
//! implies reader) and optional scopes that confine a token to stream and series prefixes.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::Method;
use crate::model::WORKFLOW_STREAM_PREFIX;

use super::error::{AuthError, Denied};

/// A role a token may hold. Ordered: each role implies those below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read, subscribe, query.
    Reader,
    /// Also append, ingest, workflow commands.
    Writer,
    /// Also membership, retention, rate limits, snapshots.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Writer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    /// The least role an action needs.
    pub fn needed_for(action: Method) -> Role {
        match action {
            Method::Read | Method::Subscribe | Method::WorkflowRead | Method::TelemetryQuery => {
                Role::Reader
            }
            Method::Append | Method::Ingest | Method::WorkflowWrite => Role::Writer,
            Method::Admin => Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: one of reader, writer, admin"))
    }
}

/// What an action touches; scopes are checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// One stream.
    Stream(&'a str),
    /// Every stream whose name starts with this (`""`: all streams, as `$all` reads).
    StreamsWithPrefix(&'a str),
    /// A workflow: its stream `workflow-{id}`.
    Workflow(&'a str),
    /// One telemetry series.
    Series(&'a str),
    /// Every series whose name starts with this (a retention policy's prefix).
    SeriesWithPrefix(&'a str),
    /// The cluster as a whole (membership, limits, snapshots): never within a scope.
    Cluster,
}

/// What a replicated command asks of whoever proposes it (`raft::Command::access` is the one
/// map from commands to this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access<'a> {
    /// A command the nodes propose themselves (rule adoption, breaker points): it carries no
    /// caller and is taken only from a node-plane identity.
    NodeOnly,
    /// A client's command: the action, on every one of these resources.
    Client(Method, Vec<Resource<'a>>),
}

/// The caller a verified token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The token's `sub`.
    pub subject: String,
    pub roles: BTreeSet<Role>,
    /// `None`: no stream scope. A token with any scope is confined to what it names.
    pub stream_prefixes: Option<Vec<String>>,
    pub series_prefixes: Option<Vec<String>>,
    /// The token's `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// The token's `tgt`: the member a node-plane token is bound to (`None`: unbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Resource names in a refusal are cut to this many bytes.
const MAX_ECHOED_NAME_BYTES: usize = 128;

impl Identity {
    /// Whether the token holds `role` or one that implies it.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.iter().any(|r| *r >= role)
    }

    /// Whether a token names any scope (then it reaches only what its scopes name).
    pub fn is_scoped(&self) -> bool {
        self.stream_prefixes.is_some() || self.series_prefixes.is_some()
    }

    /// May this caller do `action` on every one of `resources`? (A correlation over several
    /// series names them all.) No resource named means the whole store, which a scoped
    /// token does not reach.
    pub fn authorize(&self, action: Method, resources: &[Resource<'_>]) -> Result<(), AuthError> {
        let needs = Role::needed_for(action);
        if !self.has_role(needs) {
            return Err(AuthError::Forbidden(Denied::Role { action, needs }));
        }
        if !self.is_scoped() {
            return Ok(());
        }
        if resources.is_empty() {
            return Err(scope_denied("the whole store"));
        }
        for r in resources {
            if !self.in_scope(*r) {
                return Err(scope_denied(&describe(*r)));
            }
        }
        Ok(())
    }

    fn in_scope(&self, r: Resource<'_>) -> bool {
        // A prefix set covers a name, or everything under a prefix, when one of its prefixes
        // starts it.
        let covers = |prefixes: &Option<Vec<String>>, name: &str| {
            prefixes
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|p| name.starts_with(p.as_str()))
        };
        match r {
            Resource::Stream(s) | Resource::StreamsWithPrefix(s) => {
                covers(&self.stream_prefixes, s)
            }
            Resource::Workflow(id) => covers(
                &self.stream_prefixes,
                &format!("{WORKFLOW_STREAM_PREFIX}{id}"),
            ),
            Resource::Series(s) | Resource::SeriesWithPrefix(s) => covers(&self.series_prefixes, s),
            Resource::Cluster => false,
        }
    }
}

fn scope_denied(what: &str) -> AuthError {
    AuthError::Forbidden(Denied::Scope {
        resource: what.to_owned(),
    })
}

fn describe(r: Resource<'_>) -> String {
    let cut = |s: &str| {
        let mut end = s.len().min(MAX_ECHOED_NAME_BYTES);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    match r {
        Resource::Stream(s) => format!("stream {:?}", cut(s)),
        Resource::StreamsWithPrefix("") => "every stream ($all)".to_owned(),
        Resource::StreamsWithPrefix(p) => format!("streams {:?}*", cut(p)),
        Resource::Workflow(id) => format!("workflow {:?}", cut(id)),
        Resource::Series(s) => format!("series {:?}", cut(s)),
        Resource::SeriesWithPrefix(p) => format!("series {:?}*", cut(p)),
        Resource::Cluster => "the cluster".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(roles: &[Role], streams: Option<&[&str]>, series: Option<&[&str]>) -> Identity {
        let owned = |v: Option<&[&str]>| v.map(|v| v.iter().map(|s| s.to_string()).collect());
        Identity {
            subject: "t".into(),
            roles: roles.iter().copied().collect(),
            stream_prefixes: owned(streams),
            series_prefixes: owned(series),
            expires_at: u64::MAX,
            target: None,
        }
    }

    /// Each case: who, doing what, on what → allowed, or which refusal.
    #[test]
    fn roles_imply_and_scopes_confine() {
        use Method::*;
        use Resource::*;
        let reader = id(&[Role::Reader], None, None);
        let writer = id(&[Role::Writer], None, None);
        let admin = id(&[Role::Admin], None, None);
        let none = id(&[], None, None);
        let sat7 = id(&[Role::Writer], None, Some(&["sat-7/"]));
        let orders = id(&[Role::Writer], Some(&["orders-"]), None);
        let worker = id(&[Role::Writer], Some(&[WORKFLOW_STREAM_PREFIX]), None);
        let scoped_admin = id(&[Role::Admin], Some(&["orders-"]), Some(&["sat-7/"]));
        type Case<'a> = (&'a str, &'a Identity, Method, Vec<Resource<'a>>, &'a str);
        let cases: Vec<Case> = vec![
            ("reader reads", &reader, Read, vec![Stream("a")], "ok"),
            (
                "reader appends",
                &reader,
                Append,
                vec![Stream("a")],
                "role writer",
            ),
            (
                "no role reads",
                &none,
                Read,
                vec![Stream("a")],
                "role reader",
            ),
            ("writer reads", &writer, Read, vec![Stream("a")], "ok"),
            ("writer ingests", &writer, Ingest, vec![Series("x/y")], "ok"),
            ("writer admin", &writer, Admin, vec![Cluster], "role admin"),
            (
                "admin writes",
                &admin,
                WorkflowWrite,
                vec![Workflow("w")],
                "ok",
            ),
            ("admin membership", &admin, Admin, vec![Cluster], "ok"),
            (
                "sat-7 into sat-7",
                &sat7,
                Ingest,
                vec![Series("sat-7/bat")],
                "ok",
            ),
            (
                "sat-7 into sat-8",
                &sat7,
                Ingest,
                vec![Series("sat-8/x")],
                "scope",
            ),
            (
                "sat-7 correlates 7 and 8",
                &sat7,
                TelemetryQuery,
                vec![Series("sat-7/a"), Series("sat-8/a")],
                "scope",
            ),
            (
                "sat-7 appends a stream",
                &sat7,
                Append,
                vec![Stream("orders-1")],
                "scope",
            ),
            (
                "orders- appends",
                &orders,
                Append,
                vec![Stream("orders-1")],
                "ok",
            ),
            (
                "orders- reads $all",
                &orders,
                Read,
                vec![StreamsWithPrefix("")],
                "scope",
            ),
            ("orders- names nothing", &orders, Read, vec![], "scope"),
            (
                "orders- ingests",
                &orders,
                Ingest,
                vec![Series("sat-7/a")],
                "scope",
            ),
            (
                "worker writes a workflow",
                &worker,
                WorkflowWrite,
                vec![Workflow("w1")],
                "ok",
            ),
            (
                "worker lists workflows",
                &worker,
                WorkflowRead,
                vec![StreamsWithPrefix(WORKFLOW_STREAM_PREFIX)],
                "ok",
            ),
            (
                "worker appends orders",
                &worker,
                Append,
                vec![Stream("orders-1")],
                "scope",
            ),
            (
                "scoped admin: membership",
                &scoped_admin,
                Admin,
                vec![Cluster],
                "scope",
            ),
            (
                "scoped admin: retention of its series",
                &scoped_admin,
                Admin,
                vec![SeriesWithPrefix("sat-7/")],
                "ok",
            ),
            (
                "scoped admin: retention of all series",
                &scoped_admin,
                Admin,
                vec![SeriesWithPrefix("sat-")],
                "scope",
            ),
        ];
        let mut failures = Vec::new();
        println!("{:<40} {:<12} got", "case", "expected");
        for (name, who, action, resources, want) in &cases {
            let got = match who.authorize(*action, resources) {
                Ok(()) => "ok".to_owned(),
                Err(AuthError::Forbidden(Denied::Role { needs, .. })) => format!("role {needs}"),
                Err(AuthError::Forbidden(Denied::Scope { .. })) => "scope".to_owned(),
                Err(e) => format!("{e}"),
            };
            println!("{name:<40} {want:<12} {got}");
            if got != *want {
                failures.push(format!("{name}: wanted {want}, got {got}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn refusals_say_what_and_cut_long_names() {
        let sat7 = id(&[Role::Writer], None, Some(&["sat-7/"]));
        let long = format!("sat-8/{}", "x".repeat(10_000));
        let e = sat7
            .authorize(Method::Ingest, &[Resource::Series(&long)])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("permission denied: series \"sat-8/xx"), "{e}");
        assert!(e.len() < 200, "{}", e.len());
        let reader = id(&[Role::Reader], None, None);
        let e = reader
            .authorize(Method::Admin, &[Resource::Cluster])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "permission denied: Admin needs the admin role");
    }
}
