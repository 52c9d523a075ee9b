//! A small Janus configuration for the tests and `benches/janus.rs` (which include this file):
//! the HTTP and Admin APIs on loopback at the given ports, VideoRoom with string ids and an
//! `admin_key`, every other plugin and transport off.

use std::path::Path;

/// Writes `janus.jcfg` and its transport and VideoRoom files into `dir` (run Janus with
/// `-F dir -C dir/janus.jcfg`).
pub fn write(dir: &Path, port: u16, admin_port: u16, admin_key: &str, admin_secret: &str) {
    // Debian puts the plugins under the architecture's lib folder.
    let lib = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path().join("janus")))
        .find(|d| d.join("plugins/libjanus_videoroom.so").exists())
        .expect("janus's plugins folder (/usr/lib/<arch>/janus): apt-get install janus")
        .display()
        .to_string();
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            "general: {{\n configs_folder = \"{d}\"\n plugins_folder = \"{lib}/plugins\"\n transports_folder = \"{lib}/transports\"\n \
             events_folder = \"{lib}/events\"\n loggers_folder = \"{lib}/loggers\"\n debug_level = 4\n admin_secret = \"{admin_secret}\"\n}}\n\
             media: {{\n}}\nnat: {{\n}}\n\
             plugins: {{\n disable = \"libjanus_audiobridge.so,libjanus_echotest.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_nosip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so,libjanus_lua.so,libjanus_duktape.so\"\n}}\n\
             transports: {{\n disable = \"libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so\"\n}}\n\
             events: {{\n broadcast = true\n disable = \"libjanus_gelfevh.so,libjanus_mqttevh.so,libjanus_nanomsgevh.so,libjanus_rabbitmqevh.so,libjanus_wsevh.so\"\n}}\nloggers: {{\n}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n json = \"plain\"\n base_path = \"/janus\"\n http = true\n port = {port}\n interface = \"lo\"\n https = false\n}}\n\
             admin: {{\n admin_base_path = \"/admin\"\n admin_http = true\n admin_port = {admin_port}\n admin_interface = \"lo\"\n admin_https = false\n}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("janus.plugin.videoroom.jcfg"),
        format!("general: {{\n string_ids = true\n admin_key = \"{admin_key}\"\n}}\n"),
    )
    .unwrap();
}

/// Janus's sample event handler, posting its events to `backend` with HTTP Basic (`janus`,
/// `password`), as `contrib/janus/janus.eventhandler.sampleevh.jcfg` does.
pub fn write_event_handler(dir: &Path, backend: &str, password: &str) {
    std::fs::write(
        dir.join("janus.eventhandler.sampleevh.jcfg"),
        format!(
            "general: {{\n enabled = true\n events = \"sessions,handles,webrtc,plugins\"\n grouping = true\n json = \"compact\"\n \
             backend = \"{backend}\"\n backend_user = \"janus\"\n backend_pwd = \"{password}\"\n max_retransmissions = 5\n retransmissions_backoff = 100\n}}\n"
        ),
    )
    .unwrap();
}

/// Runs Janus on the configuration [`write`] left in `dir`, its output to `log` (or nowhere),
/// and waits (at most 20 s) until its API on `port` answers.
pub fn run(dir: &Path, port: u16, log: Option<&Path>) -> std::process::Child {
    use std::process::{Command, Stdio};
    let out = || match log {
        Some(p) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap()),
        None => Stdio::null(),
    };
    let mut child = Command::new("janus")
        .arg("-F")
        .arg(dir)
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .stdout(out())
        .stderr(out())
        .stdin(Stdio::null())
        .spawn()
        .expect("janus installed (apt-get install janus)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ureq::get(&format!("http://127.0.0.1:{port}/janus/info")).call().is_err() {
        if std::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let log = log.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
            panic!("janus did not start:\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// Inside a fresh network namespace (`unshare -n`): loopback up for the APIs, and a veth pair
/// on private addresses (10.99.0.1, 10.99.0.2) for the media, since Janus never gathers ICE
/// candidates on loopback interfaces.
pub fn media_network() {
    let script = "ip link set lo up; ip link add ghm0 type veth peer name ghm1; \
                  ip addr add 10.99.0.1/24 dev ghm0; ip addr add 10.99.0.2/24 dev ghm1; \
                  ip link set ghm0 up; ip link set ghm1 up";
    let out = std::process::Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(out.status.success(), "making the media network: {}", String::from_utf8_lossy(&out.stderr));
}
