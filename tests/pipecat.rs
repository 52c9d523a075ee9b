//! pipecat's `DailyRESTHelper` (PyPI `pipecat-ai`), the most common Daily REST client in
//! voice-agent code, run unmodified against a live server: it sends `exp` as a float
//! (`time.time() + n`), reads the room back by URL, mints a token and deletes the room.
//! `./run-tests` installs the package in target/test-venv.

mod common;
use common::Server;

const SCRIPT: &str = r#"
import asyncio, json, sys, time
import aiohttp
from pipecat.transports.daily.utils import DailyRESTHelper, DailyRoomParams, DailyRoomProperties

async def main(base, key):
    async with aiohttp.ClientSession() as session:
        h = DailyRESTHelper(daily_api_key=key, daily_api_url=base + "/v1", aiohttp_session=session)
        exp = time.time() + 600
        room = await h.create_room(DailyRoomParams(privacy="private", properties=DailyRoomProperties(exp=exp)))
        token = await h.get_token(room.url, expiry_time=60 * 60, eject_at_token_exp=True)
        again = await h.get_room_from_url(room.url)
        kept = {"name": room.name, "url": room.url, "exp_sent": exp, "exp_back": again.config.exp,
                "same_id": again.id == room.id, "token": token}
        print(json.dumps(kept), flush=True)
        sys.stdin.readline()  # the test joins with the token meanwhile
        deleted = await h.delete_room_by_url(room.url)
        print(json.dumps({"deleted": deleted}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[test]
fn needs_python_pipecat_daily_rest_helper_works_unmodified() {
    use std::io::{BufRead, BufReader, Write};
    common::require(common::python_has("pipecat.transports.daily.utils"), "the Python package pipecat-ai");
    let s = Server::start();
    let mut child = std::process::Command::new(common::python())
        .args(["-c", SCRIPT, &s.base, &s.key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let Ok(made) = serde_json::from_str::<serde_json::Value>(&first) else {
        let out = child.wait_with_output().unwrap();
        panic!("pipecat failed: {first}\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let name = made["name"].as_str().unwrap();
    assert_eq!(made["url"], format!("{}/{name}", s.base));
    assert!(made["same_id"].as_bool().unwrap());
    // A fractional exp is kept as whole seconds, as Daily does, and answered as an integer.
    let room = s.get(&format!("/v1/rooms/{name}")).body;
    let sent = made["exp_sent"].as_f64().unwrap();
    assert_eq!(room["config"]["exp"].as_i64(), Some(sent.trunc() as i64), "{room}");
    assert_eq!(room["privacy"], "private");
    // The token it minted is an owner token for that room, and it joins the private room.
    let token = made["token"].as_str().unwrap();
    let v = s.get(&format!("/v1/meeting-tokens/{token}")).body;
    assert_eq!((v["room_name"].as_str(), v["is_owner"].as_bool()), (Some(name), Some(true)), "{v}");
    s.join_ok(name, Some(token));
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let second = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&second).ok(), Some(serde_json::json!({"deleted": true})));
    assert!(child.wait().unwrap().success());
    assert_eq!(s.get(&format!("/v1/rooms/{name}")).status, 404);
    assert!(!s.events_of("participant.left").is_empty(), "deleting the room ejected the participant");
}
