//! The project stands alone and its API reference stays true: docs/API.md documents every
//! route the router answers (and nothing it does not), and no file in the repository points
//! outside it.

use std::collections::BTreeSet;

use gatehouse::api::routes::{endpoint_table, Op, ROUTES};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every "`METHOD /path`" written in the reference (query strings and optional parts dropped).
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/API.md")).unwrap();
    let mut out = BTreeSet::new();
    for chunk in text.split('`').skip(1).step_by(2) {
        let Some((method, path)) = chunk.split_once(' ') else { continue };
        if !["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method) || !path.starts_with('/') {
            continue;
        }
        let path = path.split(['?', '[', ' ']).next().unwrap_or(path);
        out.insert(format!("{method} {path}"));
    }
    out
}

#[test]
fn the_reference_documents_exactly_the_routes() {
    let docs = documented();
    let routed: BTreeSet<String> = ROUTES
        .iter()
        .filter(|r| !matches!(r.op, Op::TestClock | Op::TestFaults))
        .map(|r| r.label.to_string())
        .collect();
    let missing: Vec<_> = routed.difference(&docs).collect();
    assert!(missing.is_empty(), "routed but not in docs/API.md: {missing:?}");
    let unrouted: Vec<_> = docs.difference(&routed).collect();
    assert!(unrouted.is_empty(), "in docs/API.md but not routed: {unrouted:?}");
}

const TABLE_START: &str =
    "<!-- endpoints: made from src/api/routes.rs; UPDATE_API_DOC=1 cargo test --test api_doc rewrites it -->\n";
const TABLE_END: &str = "<!-- end of endpoints -->";

/// The endpoint table of docs/API.md is the route table's: who may call each route and what it
/// does are declared once, with the route. `UPDATE_API_DOC=1` rewrites the table after a change.
#[test]
fn the_endpoint_table_is_made_from_the_route_table() {
    let path = root().join("docs/API.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find(TABLE_START).expect("docs/API.md has the endpoints marker") + TABLE_START.len();
    let end = start + text[start..].find(TABLE_END).expect("docs/API.md has the end-of-endpoints marker");
    let made = endpoint_table();
    if text[start..end] == made {
        return;
    }
    if std::env::var_os("UPDATE_API_DOC").is_some() {
        std::fs::write(&path, format!("{}{made}{}", &text[..start], &text[end..])).unwrap();
        return;
    }
    panic!(
        "docs/API.md's endpoint table differs from the route table; run UPDATE_API_DOC=1 cargo test --test api_doc\n--- in docs/API.md\n{}\n--- from src/api/routes.rs\n{made}",
        &text[start..end]
    );
}

#[test]
fn nothing_points_outside_the_repository() {
    let out = std::process::Command::new("git")
        .args(["grep", "-n", "-I", "-e", "../shared", "-e", "shared/API.md", "-e", "DESIGN.md", "--", "."])
        .current_dir(root())
        .output()
        .unwrap();
    let hits = String::from_utf8_lossy(&out.stdout);
    let hits: Vec<&str> = hits.lines().filter(|l| !l.starts_with("tests/api_doc.rs:")).collect();
    assert!(hits.is_empty(), "these lines point outside the repository:\n{}", hits.join("\n"));
}
