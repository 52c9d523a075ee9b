//! The room page and dashboard in a real browser: headless Chromium (Debian's package) driven
//! by playwright-core (`tests/browser/e2e.mjs`). `./run-tests` installs both; without them the
//! test fails and says so.
//! Screenshots land in target/browser-screenshots/.

mod common;
use common::Server;

#[test]
fn needs_chromium_room_page_and_dashboard() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let have_browser = std::path::Path::new("/usr/bin/chromium").exists();
    let have_driver = root.join("tests/browser/node_modules/playwright-core").exists();
    common::require(have_browser, "Debian's chromium at /usr/bin/chromium");
    common::require(have_driver, "playwright-core in tests/browser/node_modules (npm ci)");
    // Rooms of 50 and more are large (the walk-through's large-room part); pages' joins (and
    // pre-auth checks) from this address are limited to a burst of 16 (its knocking part).
    let s = Server::start_with(&[
        ("GATEHOUSE_LARGE_ROOM_THRESHOLD", "50"),
        ("GATEHOUSE_JOIN_BURST", "16"),
        ("GATEHOUSE_JOIN_RATE", "0.01"),
    ]);
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
