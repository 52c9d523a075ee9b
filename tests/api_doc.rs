//! The project stands alone and its API reference stays true: docs/API.md documents every
//! route the router answers (and nothing it does not), and no file in the repository points
//! outside it.

use std::collections::BTreeSet;

use gatehouse::api::routes::{Op, ROUTES};

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
