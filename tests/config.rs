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

/// Input from outside (keys, files, flags) in any script never panics a CLI command: each is
/// refused or accepted with a message. A panic exits with 101 and says "panicked".
#[test]
fn non_ascii_input_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ü.toml");
    let wide_key = "ключ-ĥéllo-wörld-€€€-日本語-🔑🔑-ab";
    let strong_non_ascii: String = "é🔑ŝxÿ日ñ本ø語ßçΩж∂ƒ©˙∆˚¬…æ«‘“πøˆ¨¥†®´∑œåß∂ƒ©˙∆˚¬Ω≈ç√∫˜µ≤≥÷".into();
    std::fs::write(&file, format!("domain_name = \"日本\"\napi_keys = [\"{wide_key}\"]\n")).unwrap();
    let f = file.to_str().unwrap();
    let mut cases: Vec<(Vec<&str>, Vec<(&str, &str)>)> = vec![
        (vec!["--config", f], vec![]),
        (vec![], vec![("GATEHOUSE_API_KEY", wide_key)]),
        (vec![], vec![("GATEHOUSE_API_KEY", &strong_non_ascii)]),
        (vec![], vec![("GATEHOUSE_API_KEY", "abc€")]),
        (vec!["--public-url", "hŧtp://é"], vec![]),
        (vec!["--domain-name", "Ωmega"], vec![("GATEHOUSE_API_KEY", KEY)]),
        (vec!["--housekeeping-cron", "0 */5 ŝ * * *"], vec![("GATEHOUSE_API_KEY", KEY)]),
    ];
    cases.push((vec!["--data-dir", "/tmp/dätä"], vec![("GATEHOUSE_API_KEY", KEY)]));
    for (args, env) in &cases {
        let (_, out) = check(args, env);
        assert!(!out.contains("panicked"), "{args:?} {env:?} panicked:\n{out}");
        assert!(!out.contains(wide_key) && !out.contains(&strong_non_ascii), "a key was printed:\n{out}");
    }
    let (ok, out) = check(&[], &[("GATEHOUSE_API_KEY", &strong_non_ascii)]);
    assert!(ok, "a strong key in any script is accepted:\n{out}");
    // Other commands with odd input: refused with a message, never a panic.
    for args in [
        vec!["token", "--room", "röom", "--exp", "1h"],
        vec!["token", "--room", "room", "--exp", "1ħ"],
        vec!["token", "--room", "room", "--exp", "９h"],
        vec!["token", "--room", "room", "--exp", "9223372036854775807s"],
        vec!["token", "--room", "room", "--user-name", "bad\u{7}name"],
        vec!["token", "--room", "room", "--user-name", "ünïcødé 🙂"],
        vec!["restore", "/nonexistent/ünï.bak", "--data-dir", "/tmp/ünï"],
        vec!["backup", "/tmp/ünï/x.bak", "--data-dir", "/nonexistent/dätä"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(&args)
            .env("GATEHOUSE_API_KEY", KEY)
            .env("GATEHOUSE_DATA_DIR", tmp.path().join("dätä"))
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked:\n{text}");
        assert!(!text.contains("panicked"), "{args:?}:\n{text}");
    }
}

#[test]
fn weak_keys_are_refused_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    for weak in ["a".repeat(64), "0123456789abcdef".repeat(4), "Sup3rS3cret!".repeat(6)] {
        // The environment, the config file, and `config check` use the same rule...
        let (ok, out) = check(&[], &[("GATEHOUSE_API_KEY", &weak)]);
        assert!(!ok && out.contains("128"), "{weak}: {out}");
        let file = tmp.path().join("k.toml");
        std::fs::write(&file, format!("api_keys = [\"{weak}\"]\n")).unwrap();
        let (ok, out) = check(&["--config", file.to_str().unwrap()], &[]);
        assert!(!ok && out.contains("128"), "{weak}: {out}");
        // ...and so does start-up.
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("d"))
            .env("GATEHOUSE_API_KEY", &weak)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains("128"), "{weak}: {text}");
        assert!(!text.contains(&weak), "the key itself is never printed: {text}");
    }
}

/// Cluster nodes forward to the leader over plain HTTP: serving TLS on a node would leave the
/// leader unreachable from its followers, so the combination is refused, saying what to do.
#[test]
fn tls_on_cluster_nodes_is_refused_with_what_to_do_instead() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    std::fs::write(&cert, "x").unwrap();
    std::fs::write(&key, "x").unwrap();
    let (ok, out) = check(
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("GATEHOUSE_API_KEY", &"k".repeat(40))],
    );
    assert!(!ok, "accepted:\n{out}");
    assert!(out.contains("--tls-cert is not supported with --store etcd") && out.contains("proxy"), "{out}");
}

/// `--acme-*` settings are checked before anything starts, each refusal saying what is wrong.
#[test]
fn acme_settings_are_checked() {
    let key = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9".to_string();
    let env = [("GATEHOUSE_API_KEY", key.as_str())];
    for (args, says) in [
        (&["--acme-domain", "*.example.com"][..], "is not a DNS name a CA can issue for"),
        (&["--acme-domain", "192.168.1.10"][..], "is not a DNS name a CA can issue for"),
        (&["--acme-domain", "localhost"][..], "is not a DNS name a CA can issue for"),
        (&["--acme-domain", "a.example.com,A.example.com"][..], "is given twice"),
        (&["--acme-domain", "meet.example.com", "--acme-email", "not an address"][..], "--acme-email must be"),
        (
            &["--acme-domain", "meet.example.com", "--acme-directory", "http://ca.example/dir"][..],
            "must be an https:// URL",
        ),
        (
            &["--acme-domain", "meet.example.com", "--acme-ca-root", "/nonexistent/ca.pem"][..],
            "--acme-ca-root /nonexistent/ca.pem",
        ),
        (&["--acme-email", "a@example.com"][..], "need --acme-domain"),
        (
            &["--acme-domain", "meet.example.com", "--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:1"][..],
            "not supported with --store etcd",
        ),
    ] {
        let (ok, out) = check(args, &env);
        assert!(!ok, "{args:?} accepted:\n{out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
    let (ok, out) = check(&["--acme-domain", "Meet.Example.com.", "--acme-email", "ops@example.com"], &env);
    assert!(ok, "{out}");
    assert!(out.contains("meet.example.com") && out.contains("acme: no certificate yet"), "{out}");
}
