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
