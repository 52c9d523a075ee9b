//! Key layouts (part of the on-disk format): big-endian numbers so that byte order is numeric
//! order, and `\0` between variable-length parts (room names and ids never contain it).

pub const META_SCHEMA: &[u8] = b"schema";
pub const META_DOMAIN: &[u8] = b"domain_id";
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
pub const META_ROOMS: &[u8] = b"room_count";

/// `rooms_by_created`: created_ms (BE, negative clamped to 0) then the name.
pub fn room_created(created_ms: i64, name: &str) -> Vec<u8> {
    let mut k = u64::try_from(created_ms).unwrap_or(0).to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// `tokens_by_room`: room name (empty for tokens valid in any room), `\0`, jti.
pub fn token_room(room: Option<&str>, jti: &str) -> Vec<u8> {
    let mut k = room_prefix(room.unwrap_or(""));
    k.extend_from_slice(jti.as_bytes());
    k
}

pub fn room_prefix(room: &str) -> Vec<u8> {
    let mut k = room.as_bytes().to_vec();
    k.push(0);
    k
}

pub fn seq(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn u64_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// A key as text for error messages: UTF-8 where it is, hex otherwise.
pub fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// `sessions_by_room` and `sessions_by_token`: prefix (room or token id), `\0`, session id.
pub fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = room_prefix(a);
    k.extend_from_slice(b.as_bytes());
    k
}

/// `sessions_by_user`: room, `\0`, user id, `\0`, session id. Also `bans` (without the session).
pub fn triple(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = pair(a, b);
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

/// Revocation keys: `j` + token id; `u` + room + `\0` + user; `r` + room.
pub fn revoke_token(token_id: &str) -> Vec<u8> {
    [b"j", token_id.as_bytes()].concat()
}

pub fn revoke_user(room: &str, user: &str) -> Vec<u8> {
    [b"u".as_slice(), &pair(room, user)].concat()
}

pub fn revoke_room(room: &str) -> Vec<u8> {
    [b"r", room.as_bytes()].concat()
}

/// Timer kinds (part of the on-disk format).
pub const TIMER_LEASE: u8 = 1;
pub const TIMER_EJECT: u8 = 2;
/// A room's `exp` (id = room name).
pub const TIMER_ROOM_EXP: u8 = 3;
/// A ban's `until` (id = room + `\0` + user id).
pub const TIMER_BAN: u8 = 4;

/// `timers`: deadline ms (BE, negative clamped to 0), kind, id.
pub fn timer(deadline_ms: i64, kind: u8, id: &str) -> Vec<u8> {
    let mut k = u64::try_from(deadline_ms).unwrap_or(0).to_be_bytes().to_vec();
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `timers_by_key`: kind, id.
pub fn timer_ref(kind: u8, id: &str) -> Vec<u8> {
    let mut k = vec![kind];
    k.extend_from_slice(id.as_bytes());
    k
}

/// Splits a `timers` key back into (deadline ms, kind, id).
pub fn parse_timer(k: &[u8]) -> Option<(i64, u8, String)> {
    let deadline = i64::try_from(u64_of(k.get(..8)?)?).ok()?;
    let kind = *k.get(8)?;
    let id = String::from_utf8(k.get(9..)?.to_vec()).ok()?;
    Some((deadline, kind, id))
}
