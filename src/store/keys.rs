//! Key layouts (part of the on-disk format). Numbers are big-endian so that byte order is
//! numeric order. Variable-length parts are length-prefixed (u16 BE length, then the bytes),
//! so no id can be mistaken for another or for a prefix of another, whatever bytes it holds:
//! the prefix for user `a` in a room never matches user `a\0b`.

pub const META_SCHEMA: &[u8] = b"schema";
pub const META_DOMAIN: &[u8] = b"domain_id";
/// The next event seq, written at each checkpoint (the event log holds the truth; this keeps
/// the counter when compaction has emptied the log).
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
pub const META_ROOMS: &[u8] = b"room_count";
/// The highest journal batch whose writes sled holds (it may hold some later writes too).
pub const META_APPLIED_LSN: &[u8] = b"applied_lsn";
/// The first event seq served (compaction moves it).
pub const META_EVENTS_OLDEST: &[u8] = b"events_oldest";
/// The domain settings (`records::ObjectRecord`); absent until the first `POST /v1/`.
pub const META_DOMAIN_CONFIG: &[u8] = b"domain_config";
/// What `--acme-domain` keeps: the ACME account and the certificate (`ObjectRecord` v1).
pub const META_ACME: &[u8] = b"acme";

/// Appends one length-prefixed part.
pub fn part(k: &mut Vec<u8>, s: &[u8]) {
    // Parts are names and ids (≤ 1 KiB); a longer one is cut rather than wrapped.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&s[..usize::from(len)]);
}

/// Length-prefixed parts, concatenated.
pub fn parts(items: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(items.iter().map(|s| s.len() + 2).sum());
    for s in items {
        part(&mut k, s.as_bytes());
    }
    k
}

/// Splits a key made by [`parts`] back into its parts (`None` if it is not one).
pub fn split(mut k: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !k.is_empty() {
        let len = usize::from(u16::from_be_bytes(k.get(..2)?.try_into().ok()?));
        out.push(String::from_utf8(k.get(2..2 + len)?.to_vec()).ok()?);
        k = &k[2 + len..];
    }
    Some(out)
}

/// `rooms_by_created`: created_ms (BE, negative clamped to 0) then the name.
pub fn room_created(created_ms: i64, name: &str) -> Vec<u8> {
    let mut k = u64::try_from(created_ms).unwrap_or(0).to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// `tokens_by_room`: room (empty for tokens valid in any room), then jti.
pub fn token_room(room: Option<&str>, jti: &str) -> Vec<u8> {
    parts(&[room.unwrap_or(""), jti])
}

/// `Meetings` tree: a meeting's record.
pub fn meeting(id: &str) -> Vec<u8> {
    let mut k = b"m".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// `Meetings` tree: a running meeting's session data (`set-session-data`), removed when the
/// meeting ends.
pub fn meeting_data(id: &str) -> Vec<u8> {
    let mut k = b"d".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// `Meetings` tree: a room's meetings (an index; the value is empty).
pub fn meeting_of_room(room: &str, id: &str) -> Vec<u8> {
    let mut k = b"r".to_vec();
    k.extend_from_slice(&parts(&[room, id]));
    k
}

/// Prefix of [`meeting_of_room`] for one room.
pub fn meetings_of_room(room: &str) -> Vec<u8> {
    let mut k = b"r".to_vec();
    k.extend_from_slice(&parts(&[room]));
    k
}

/// `MeetingParticipants` tree: a meeting's participants in join order.
pub fn meeting_participant(meeting: &str, join_ms: i64, session: &str) -> Vec<u8> {
    let mut k = parts(&[meeting]);
    k.extend_from_slice(&(join_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(session.as_bytes());
    k
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

/// `bans`: room, user id.
pub fn ban(room: &str, user: &str) -> Vec<u8> {
    parts(&[room, user])
}

/// Revocation keys: `j` + token id; `u` + (room, user); `r` + room; `a` + token id (its right
/// to administer participants, withdrawn by update-permissions).
pub fn revoke_token(token_id: &str) -> Vec<u8> {
    [b"j", token_id.as_bytes()].concat()
}

pub fn revoke_admin(token_id: &str) -> Vec<u8> {
    [b"a", token_id.as_bytes()].concat()
}

pub fn revoke_user(room: &str, user: &str) -> Vec<u8> {
    [b"u".as_slice(), &parts(&[room, user])].concat()
}

pub fn revoke_room(room: &str) -> Vec<u8> {
    [b"r", room.as_bytes()].concat()
}

/// `attempts`: webhook id, attempt ms (BE), seq (BE).
pub fn attempt(webhook: &str, at_ms: i64, seq: u64) -> Vec<u8> {
    let mut k = parts(&[webhook]);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of every attempt of a webhook.
pub fn attempts_of(webhook: &str) -> Vec<u8> {
    parts(&[webhook])
}

/// Durable timer kinds (part of the on-disk format). Session timers (leases, ejections) are
/// derived from the sessions at start-up and never stored as rows.
pub const TIMER_ROOM_EXP: u8 = 3;
pub const TIMER_BAN: u8 = 4;

/// `timers`: deadline ms (BE, negative clamped to 0), kind, then the id's parts.
pub fn timer(deadline_ms: i64, kind: u8, id: &[&str]) -> Vec<u8> {
    let mut k = u64::try_from(deadline_ms).unwrap_or(0).to_be_bytes().to_vec();
    k.push(kind);
    k.extend_from_slice(&parts(id));
    k
}

/// Splits a `timers` key back into (deadline ms, kind, id parts).
pub fn parse_timer(k: &[u8]) -> Option<(i64, u8, Vec<String>)> {
    let deadline = i64::try_from(u64_of(k.get(..8)?)?).ok()?;
    let kind = *k.get(8)?;
    Some((deadline, kind, split(k.get(9..)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_unambiguous() {
        // The prefix for (room, "a") is not a prefix of the key for (room, "a\0b").
        let a = parts(&["room", "a"]);
        let ab = parts(&["room", "a\0b"]);
        assert!(!ab.starts_with(&a));
        assert_ne!(parts(&["ab", "c"]), parts(&["a", "bc"]));
        assert_eq!(split(&ab).unwrap(), vec!["room".to_string(), "a\0b".to_string()]);
        assert!(split(&[0, 5, b'x']).is_none());
        let t = timer(1234, TIMER_BAN, &["r", "u\0v"]);
        assert_eq!(parse_timer(&t), Some((1234, TIMER_BAN, vec!["r".into(), "u\0v".into()])));
        assert!(!revoke_user("r", "a\0b").starts_with(&revoke_user("r", "a")));
    }
}
