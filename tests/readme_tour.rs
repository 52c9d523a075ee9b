//! The README's curl tour, run as written against a fresh server: every `# →` line names
//! fragments (separated by ` … `) that must appear, in order, in the output of the commands
//! before it.

mod common;
use common::Server;

struct Step {
    commands: String,
    expect: Vec<String>,
}

fn tour_steps() -> Vec<Step> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- tour:start -->").expect("README has a tour:start marker");
    let end = readme.find("<!-- tour:end -->").expect("README has a tour:end marker");
    let mut steps = Vec::new();
    let mut commands = String::new();
    for line in readme[start..end].lines() {
        let t = line.trim();
        if let Some(exp) = t.strip_prefix("# →") {
            steps.push(Step {
                commands: std::mem::take(&mut commands),
                expect: exp.split(" … ").map(|s| s.trim().to_string()).collect(),
            });
        } else if !(t.starts_with('#') || t.starts_with("```") || t.starts_with("<!--") || t.is_empty()) {
            commands.push_str(line);
            commands.push('\n');
        }
    }
    assert!(commands.trim().is_empty(), "commands after the last expectation: {commands}");
    steps
}

#[test]
fn readme_tour_works_as_written() {
    let steps = tour_steps();
    assert!(steps.len() >= 6, "the tour lost its steps");
    let s = Server::start();
    let mut script = String::from("set -u\n");
    for (i, step) in steps.iter().enumerate() {
        script.push_str(&format!("echo '@@STEP {i}'\n{}echo\n", step.commands));
    }
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("GH", &s.base)
        .env("KEY", &s.key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "tour script failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for (i, step) in steps.iter().enumerate() {
        let from = stdout.find(&format!("@@STEP {i}\n")).unwrap();
        let rest = &stdout[from..];
        let section = rest[1..].find("@@STEP ").map_or(rest, |n| &rest[..n + 1]);
        let mut at = 0;
        for frag in &step.expect {
            match section[at..].find(frag.as_str()) {
                Some(p) => at += p + frag.len(),
                None => panic!("step {i} ({}) lacks {frag:?} in order; output:\n{section}", step.commands.trim()),
            }
        }
    }
}
