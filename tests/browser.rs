//! The room page and dashboard in a real browser: headless Chromium (Debian's package) driven
//! by playwright-core (`tests/browser/e2e.mjs`). `.ci/run` installs both and sets
//! GATEHOUSE_REQUIRE_BROWSER=1, so there a missing browser fails; elsewhere it is skipped loudly.
//! Screenshots land in target/browser-screenshots/.

mod common;
use common::Server;

#[test]
fn room_page_and_dashboard_in_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let have_browser = std::path::Path::new("/usr/bin/chromium").exists();
    let have_driver = root.join("tests/browser/node_modules/playwright-core").exists();
    if !(have_browser && have_driver) {
        let why = format!("chromium at /usr/bin/chromium: {have_browser}; playwright-core in tests/browser/node_modules: {have_driver}");
        assert!(std::env::var("GATEHOUSE_REQUIRE_BROWSER").is_err(), "browser tests required but cannot run ({why})");
        eprintln!("\n!!! SKIPPED browser tests ({why}). Run .ci/run, which installs them. !!!\n");
        return;
    }
    let s = Server::start();
    let shots = root.join("target/browser-screenshots");
    let out = std::process::Command::new("node")
        .arg(root.join("tests/browser/e2e.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("BASE", &s.base)
        .env("KEY", &s.key)
        .env("SHOTS", &shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "browser tests failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
