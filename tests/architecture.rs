//! ARCHITECTURE.md's module table, enforced: every module of the library has its row, and
//! what a row says a module must not do is checked against the module's source (its `use`
//! paths and qualified names, comments and test modules left out). A workspace crate the
//! library re-exports as a module (`pub use aether_guard as guard;`) is a module here too,
//! its source under `crates/<name>/src`. Known drift, if any, is listed explicitly and must
//! still be there: fixing it means deleting its line here, so the list can only shrink.

use std::path::{Path, PathBuf};

/// (module, what its code must not name, why — the must-not of its row).
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "model",
        &[
            "std::fs",
            "rocksdb",
            "tokio",
            "tonic",
            "crate::storage",
            "crate::raft",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
        ],
        "touch IO",
    ),
    (
        "storage",
        &[
            "tonic",
            "openraft",
            "crate::raft",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
            "crate::proto",
        ],
        "know about gRPC or Raft",
    ),
    (
        "eventstore",
        &[
            "tonic",
            "openraft",
            "crate::proto",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
        ],
        "know transports or openraft (writes go through the state machine)",
    ),
    (
        "workflow",
        &[
            "tonic",
            "openraft",
            "crate::proto",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
        ],
        "know transports or openraft",
    ),
    (
        "telemetry",
        &[
            "tonic",
            "openraft",
            "crate::proto",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
            "SystemTime::now",
        ],
        "know transports, or read the wall clock (time is the replicated commit time)",
    ),
    (
        "limits",
        &[
            "tonic",
            "openraft",
            "crate::proto",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
            "SystemTime::now",
        ],
        "know transports or openraft, or read the wall clock",
    ),
    (
        "time",
        &[
            "SystemTime",
            "Instant",
            "now_utc",
            "now_local",
            "std::fs",
            "std::net",
            "tokio",
            "rocksdb",
        ],
        "read a clock (every time is an argument) or do IO",
    ),
    (
        "raft",
        &[
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
            "crate::ctl",
        ],
        "depend on the layers above it",
    ),
    (
        "node",
        &[
            "crate::proto",
            "crate::service",
            "crate::api",
            "crate::server",
            "crate::ctl",
        ],
        "hold protobuf conversions, or depend on the layers above it",
    ),
    (
        "service",
        &[
            "tonic",
            "axum",
            "openraft",
            "rocksdb",
            "crate::proto",
            "crate::raft::network",
            "crate::raft::service",
            "crate::api",
            "crate::server",
            "crate::ctl",
            ".store.db()",
        ],
        "know a transport (every adapter calls the same operations)",
    ),
    (
        "api",
        &[
            "crate::node",
            "crate::storage",
            "crate::raft::network",
            "crate::raft::service",
            "crate::raft::state_machine",
            "crate::server",
            "crate::ctl",
            "openraft",
            "rocksdb",
        ],
        "reach past the service layer",
    ),
    (
        "auth",
        &[
            "tonic",
            "axum",
            "openraft",
            "rocksdb",
            "crate::proto",
            "crate::storage",
            "crate::raft",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
            "crate::ctl",
            "crate::config",
        ],
        "know a transport, openraft or storage (adapters hand it token strings)",
    ),
    (
        "tls",
        &[
            "openraft",
            "crate::raft",
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
            "crate::ctl",
            "crate::config",
        ],
        "know the node, openraft or the services",
    ),
    ("server", &["crate::ctl"], "use the CLI"),
    (
        "guard",
        &[
            "std::time",
            "SystemTime",
            "Instant",
            "std::fs",
            "std::net",
            "std::thread",
            "tokio",
            "tonic",
            "rocksdb",
            "openraft",
            "aetherops",
        ],
        "read a clock, do IO or depend on the node (time is passed in)",
    ),
    (
        "config",
        &[
            "crate::node",
            "crate::service",
            "crate::api",
            "crate::server",
            "crate::ctl",
        ],
        "depend on the layers that read it",
    ),
];

/// Drift known and tracked by an open issue (module, name, file): each must still occur.
const KNOWN_DRIFT: &[(&str, &str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/…` of a file of the crate.
fn relative(f: &Path) -> String {
    f.strip_prefix(root())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A module's files: `src/<m>.rs`, or everything under `src/<m>/`, or under
/// `crates/<m>/src/` for a workspace crate re-exported as the module. Files of test modules
/// (`tests.rs`, `*_tests.rs`, included with `#[cfg(test)] #[path]`) are left out.
fn module_files(m: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        root().join("src").join(m),
        root().join("crates").join(m).join("src"),
    ] {
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
    }
    let file = root().join("src").join(format!("{m}.rs"));
    if file.is_file() {
        files.push(file);
    }
    files.retain(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        name != "tests.rs" && !name.ends_with("_tests.rs")
    });
    files
}

/// Modules that are workspace crates: `pub use <crate> as <module>;` lines of `src/lib.rs`.
fn reexported_crates() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub use "))
        .filter_map(|l| l.strip_suffix(';')?.split_once(" as "))
        .map(|(_, module)| module.trim().to_owned())
        .collect()
}

/// The code of a file that ships: comments and `#[cfg(test)]` modules left out.
fn shipped_code(path: &Path) -> Vec<(usize, String)> {
    shipped_code_of(&std::fs::read_to_string(path).unwrap())
}

/// A line without its `//` comment (a `//` inside `://`, as in a URL, is code).
fn without_comment(line: &str) -> &str {
    let mut from = 0;
    while let Some(i) = line[from..].find("//") {
        let at = from + i;
        if at > 0 && line.as_bytes()[at - 1] == b':' {
            from = at + 2;
            continue;
        }
        return &line[..at];
    }
    line
}

/// Whether `code` names `name`. A grouped import (`use crate::{node::Node, model};`, joined
/// into one line by `shipped_code_of`) names `crate::node` too.
fn names(code: &str, name: &str) -> bool {
    if code.contains(name) {
        return true;
    }
    let Some(module) = name.strip_prefix("crate::") else {
        return false;
    };
    let Some(group) = code.split_once("crate::{").map(|(_, g)| g) else {
        return false;
    };
    group
        .split(|c: char| c == ',' || c == '{' || c.is_whitespace())
        .any(|item| item == module || item.starts_with(&format!("{module}::")))
}

fn shipped_code_of(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    // A `use crate::{…}` spread over lines, joined until its `;`.
    let mut group: Option<(usize, String)> = None;
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_cfg_test = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if t.starts_with("#[cfg(test)]") {
            pending_cfg_test = true;
            continue;
        }
        if pending_cfg_test && skip_depth.is_none() && t.contains('{') {
            skip_depth = Some(depth);
            pending_cfg_test = false;
        }
        depth += opens - closes;
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        if pending_cfg_test && !t.is_empty() && !t.starts_with("#[") {
            // `#[cfg(test)]` on a one-line item.
            pending_cfg_test = false;
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = without_comment(line);
        if let Some((first, mut joined)) = group.take() {
            joined.push(' ');
            joined.push_str(code.trim());
            if code.contains(';') {
                out.push((first, joined));
            } else {
                group = Some((first, joined));
            }
            continue;
        }
        if code.contains("crate::{") && !code.contains(';') {
            group = Some((i + 1, code.to_owned()));
            continue;
        }
        out.push((i + 1, code.to_owned()));
    }
    out.extend(group);
    out
}

/// The checker itself: it finds what it must (a planted breach in each form) and nothing
/// in comments or test modules.
#[test]
fn the_checker_finds_planted_breaches() {
    let source = r#"//! Docs naming crate::node are fine.
use crate::model::Limits;
use crate::node::Node;
use crate::{
    model::X,
    node::Y,
};
use crate::{storage, model};
fn f() { let u = "http://x"; crate::node::call(); }
// crate::node in a comment
#[cfg(test)]
mod tests {
    use crate::node::Node;
}
"#;
    let hits: Vec<usize> = shipped_code_of(source)
        .into_iter()
        .filter(|(_, code)| names(code, "crate::node"))
        .map(|(line, _)| line)
        .collect();
    assert_eq!(hits, [3, 4, 9]);
    let storage: Vec<usize> = shipped_code_of(source)
        .into_iter()
        .filter(|(_, code)| names(code, "crate::storage"))
        .map(|(line, _)| line)
        .collect();
    assert_eq!(storage, [8]);
}

#[test]
fn every_module_has_its_row() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for e in std::fs::read_dir(root().join("src")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if ["lib", "bin"].contains(&name.as_str()) {
            continue;
        }
        if !(p.is_dir() || p.extension().is_some_and(|x| x == "rs")) {
            continue;
        }
        if !doc.contains(&format!("| `{name}` |")) {
            missing.push(name);
        }
    }
    for name in reexported_crates() {
        if !doc.contains(&format!("| `{name}` |")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a row in ARCHITECTURE.md: {missing:?}"
    );
}

#[test]
fn modules_keep_their_must_nots() {
    let mut breaches = Vec::new();
    let mut drift_seen = vec![false; KNOWN_DRIFT.len()];
    for (module, forbidden, why) in RULES {
        let files = module_files(module);
        assert!(!files.is_empty(), "module {module} has no files");
        for f in files {
            let rel = relative(&f);
            for (line, code) in shipped_code(&f) {
                for name in *forbidden {
                    if !names(&code, name) {
                        continue;
                    }
                    if let Some(k) = KNOWN_DRIFT
                        .iter()
                        .position(|(m, n, file)| m == module && n == name && *file == rel)
                    {
                        drift_seen[k] = true;
                        continue;
                    }
                    breaches.push(format!(
                        "{rel}:{line}: {module} must not {why}: {}",
                        code.trim()
                    ));
                }
            }
        }
    }
    assert!(
        breaches.is_empty(),
        "the module table is broken:\n{}",
        breaches.join("\n")
    );
    for (k, seen) in drift_seen.iter().enumerate() {
        assert!(
            seen,
            "known drift {:?} is gone: delete its line from KNOWN_DRIFT",
            KNOWN_DRIFT[k]
        );
    }
}

#[test]
fn only_the_cli_binary_uses_the_cli() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut users = Vec::new();
    for f in files {
        let rel = relative(&f);
        if rel.starts_with("src/ctl") || rel == "src/bin/aetherctl.rs" || rel == "src/lib.rs" {
            continue;
        }
        for (line, code) in shipped_code(&f) {
            if code.contains("crate::ctl") || code.contains("aetherops::ctl") {
                users.push(format!("{rel}:{line}"));
            }
        }
    }
    assert!(users.is_empty(), "the server uses the CLI: {users:?}");
}

/// Every call to another node goes through the one outgoing-peer client
/// (`raft::network::Peer::call`): no other module of the server builds a gRPC client or a
/// channel, so a credential, a deadline or a breaker is added in one place.
#[test]
fn only_the_peer_client_calls_other_nodes() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut callers = Vec::new();
    for f in files {
        let rel = relative(&f);
        // The CLI is a client of the public API, not a node.
        if rel == "src/raft/network.rs" || rel.starts_with("src/ctl") || rel.starts_with("src/bin")
        {
            continue;
        }
        for (line, code) in shipped_code(&f) {
            for name in [
                "Client::new",
                "Client<",
                "Client::connect",
                "client::Grpc",
                "Endpoint",
                "transport::Channel",
                "connect_lazy",
                "TcpStream::connect",
            ] {
                if code.contains(name) {
                    callers.push(format!("{rel}:{line}: {}", code.trim()));
                }
            }
        }
    }
    assert!(
        callers.is_empty(),
        "calls to other nodes outside raft::network:\n{}",
        callers.join("\n")
    );
}

/// The guards' cores stay a light crate: serde and thiserror at run time, nothing else, so
/// that its coverage build (scripts/coverage-guard) compiles in seconds without RocksDB.
#[test]
fn the_guard_crate_depends_on_serde_and_thiserror_only() {
    assert!(reexported_crates().contains(&"guard".to_owned()));
    let manifest = std::fs::read_to_string(root().join("crates/guard/Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&manifest).unwrap();
    let mut deps: Vec<&str> = manifest["dependencies"]
        .as_table()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    deps.sort_unstable();
    assert_eq!(deps, ["serde", "thiserror"]);
}
