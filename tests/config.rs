//! Configuration: a TOML file, then the environment, then flags, in rising precedence;
//! `gatehouse config check` validates and prints the effective settings with keys masked.

use std::process::Command;

const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";

fn check(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(["config", "check"]).args(args);
    for k in [
        "GATEHOUSE_API_KEY",
        "GATEHOUSE_LEASE_SECS",
        "GATEHOUSE_DOMAIN_NAME",
        "GATEHOUSE_CONFIG",
        "GATEHOUSE_JOIN_RATE",
        "GATEHOUSE_JOIN_BURST",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn file_then_env_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!("lease_secs = 60\ndomain_name = \"from-file\"\njoin_burst = 7\nwebhook_deny_private = true\ntrusted_proxies = [\"10.0.0.1\", \"10.0.0.2\"]\napi_keys = [\"{KEY}\"]\n"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (ok, out) = check(&["--config", f], &[]);
    assert!(ok, "{out}");
    for line in
        ["lease_ms = 60000", "domain_name = from-file", "join_burst = 7", "webhook_deny_private = true", "10.0.0.2"]
    {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains(KEY), "the key is masked:\n{out}");
    // The environment beats the file; a flag beats both.
    let (ok, out) = check(&["--config", f], &[("GATEHOUSE_LEASE_SECS", "90"), ("GATEHOUSE_DOMAIN_NAME", "from-env")]);
    assert!(ok, "{out}");
    assert!(out.contains("lease_ms = 90000") && out.contains("domain_name = from-env"), "{out}");
    let (ok, out) = check(&["--config", f, "--domain-name", "from-flag"], &[("GATEHOUSE_DOMAIN_NAME", "from-env")]);
    assert!(ok, "{out}");
    assert!(out.contains("domain_name = from-flag") && out.contains("lease_ms = 60000"), "{out}");
    // GATEHOUSE_CONFIG names the file too.
    let (ok, out) = check(&[], &[("GATEHOUSE_CONFIG", f)]);
    assert!(ok && out.contains("domain_name = from-file"), "{out}");
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    for (content, word) in [
        ("leese_secs = 5\n", "unknown setting 'leese_secs'"),
        ("lease_secs = 1\n", "lease"),
        ("lease_secs = \n", "--config"),
        ("api_keys = [\"short\"]\n", "128"),
        ("housekeeping_cron = \"often\"\n", "housekeeping_cron"),
    ] {
        let file = tmp.path().join("bad.toml");
        std::fs::write(&file, content).unwrap();
        let (ok, out) = check(&["--config", file.to_str().unwrap()], &[]);
        assert!(!ok, "{content} was accepted:\n{out}");
        assert!(out.contains(word), "{content}: {out}");
    }
    let (ok, out) = check(&["--config", "/nonexistent/gatehouse.toml"], &[]);
    assert!(!ok && out.contains("/nonexistent/gatehouse.toml"), "{out}");
}
