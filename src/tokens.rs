//! Meeting tokens: API keys as signing keys (the key ring), Daily's compact claims, signing,
//! and verification with a pinned algorithm (HS256) and our own `nbf`/`exp` checks.
//!
//! Must not: touch the store or HTTP, or log a token or key. The only user of `jsonwebtoken`
//! (ARCHITECTURE.md, invariant 10). jsonwebtoken's own claim checks are switched off: its defaults (60 s
//! leeway, `nbf` unchecked, `exp` required and integer-only) are not Daily's rules. Signing
//! writes what `jsonwebtoken::encode` would, from a header encoded and an HMAC keyed once per
//! key (tested byte for byte); verification is jsonwebtoken's, with the algorithm pinned.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Hmac;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::properties::{self, Kind, PropertyError};

/// Every property `POST /v1/meeting-tokens` accepts.
const PROPERTIES: &[(&str, Kind)] = &[
    ("room_name", Kind::Str(crate::rooms::MAX_NAME_LEN)),
    ("user_name", Kind::Text(100)),
    ("user_id", Kind::Text(255)),
    ("is_owner", Kind::Bool),
    ("nbf", Kind::UnixSecs),
    ("exp", Kind::UnixSecs),
    ("eject_at_token_exp", Kind::Bool),
    ("eject_after_elapsed", Kind::Int(1, 315_360_000)),
    ("permissions", Kind::Permissions),
    ("knocking", Kind::Bool),
    ("enable_screenshare", Kind::Bool),
    ("start_video_off", Kind::Bool),
    ("start_audio_off", Kind::Bool),
    ("enable_recording", Kind::StrOrFalse(64)),
    ("enable_prejoin_ui", Kind::Bool),
    ("enable_live_captions_ui", Kind::Bool),
    ("enable_recording_ui", Kind::Bool),
    ("enable_terse_logging", Kind::Bool),
    ("start_cloud_recording", Kind::Bool),
    ("start_cloud_recording_opts", Kind::Object),
    ("auto_start_transcription", Kind::Bool),
    ("close_tab_on_exit", Kind::Bool),
    ("redirect_on_meeting_exit", Kind::Str(2048)),
    ("lang", Kind::Str(16)),
];

/// Long property name → Daily's compact claim name. Properties not listed travel under their
/// long names, as Daily's own tokens and real clients do.
const COMPACT: &[(&str, &str)] = &[
    ("room_name", "r"),
    ("user_name", "u"),
    ("user_id", "ud"),
    ("is_owner", "o"),
    ("nbf", "nbf"),
    ("exp", "exp"),
    ("eject_at_token_exp", "ejt"),
    ("eject_after_elapsed", "eje"),
    ("permissions", "p"),
    ("enable_screenshare", "ss"),
    ("start_video_off", "vo"),
    ("start_audio_off", "ao"),
    ("enable_recording", "er"),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("meeting token {0}")]
    Property(#[from] PropertyError),
    #[error("could not sign the token")]
    Signing,
    #[error("API key {0}")]
    WeakKey(String),
}

/// Why a token was refused before any time or room check. `detail()` is the machine word that
/// events and `?verbose=true` carry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token algorithm is not accepted (only HS256 is)")]
    Algorithm,
    #[error("token is signed with a key this server does not have")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token was issued for another domain")]
    WrongDomain,
    #[error("token claim '{0}' has the wrong type")]
    BadClaim(&'static str),
    /// A claim the API would have refused to put in a token (held to the same rules whoever
    /// minted it): the message names the claim and the rule, never its value.
    #[error("token {0}")]
    InvalidClaim(String),
}

impl Rejection {
    pub fn detail(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::Algorithm => "bad_algorithm",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadSignature | Rejection::WrongDomain => "bad_signature",
            Rejection::BadClaim(_) | Rejection::InvalidClaim(_) => "bad_claim",
        }
    }
}

/// One API key: it authenticates admin calls and signs tokens.
pub struct SigningKey {
    /// Short public hash of the key: the JWT `kid` and the `api:<kid>` in events.
    pub kid: String,
    digest: [u8; 32],
    /// HMAC-SHA256 keyed once: signing clones it instead of hashing the key again.
    mac: Hmac<Sha256>,
    /// The JWT header (`alg` HS256, `kid`) as it is signed, base64url: the same for every token.
    header: String,
    dec: DecodingKey,
}

/// All active API keys. The first one signs tokens made without a specific key.
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

/// `bytes` random bytes from the OS-seeded CSPRNG, in hex (keys, session secrets, nonces).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// HMAC-SHA256 of `msg` under `key`, in hex (secrets derived from a shared one).
pub fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    use hmac::Mac as _;
    // Cannot fail: HMAC takes a key of any length (a longer one is hashed first); only
    // fixed-key MACs refuse a length.
    let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `kid` of a key: the first 8 bytes of its SHA-256, in hex.
pub fn kid_for(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Estimated entropy of a key in bits. Keys also sign tokens, so guessable ones are refused.
///
/// Only one period of a key made of a repeated substring counts (`abcabcab` is worth `abc`).
/// What remains is credited `log2(alphabet)` bits per character when its characters look like
/// uniform draws from the smallest usual alphabet holding them (digits, hex, alphanumeric,
/// base64, printable ASCII): its Shannon entropy is at least 80% of what uniform draws of that
/// length would show on average. Random keys pass essentially always: in a simulation of 10⁶
/// draws, 64 hex and 43–44 base64 characters always did, and about one 32-character hex key in
/// 10⁵ fell short (it had 9 distinct characters; the message says to generate another). A
/// lower bar would pass word-based passphrases such as `correct-horse-battery-staple-zebra`. Anything else is
/// credited its per-character Shannon entropy × length. So a repeated character scores 0, a
/// short pattern scores one copy of it, and 32 random hex characters score 128.
pub fn estimated_bits(key: &str) -> f64 {
    let chars: Vec<char> = key.chars().collect();
    let unit = &chars[..smallest_period(&chars)];
    let n = unit.len();
    let h = shannon_bits(unit);
    match alphabet_size(unit) {
        Some(k) if h >= 0.8 * expected_shannon_bits(n, k) => n as f64 * f64::from(k).log2(),
        _ => n as f64 * h,
    }
}

/// The length of the shortest prefix the whole key repeats (at least twice, the last copy
/// possibly cut short), or the key's length when it repeats nothing.
fn smallest_period(s: &[char]) -> usize {
    // Knuth–Morris–Pratt failure function: the longest proper border of each prefix.
    let mut border = vec![0usize; s.len()];
    let mut k = 0;
    for i in 1..s.len() {
        while k > 0 && s[i] != s[k] {
            k = border[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        border[i] = k;
    }
    let period = s.len() - border.last().copied().unwrap_or(0);
    if period * 2 <= s.len() {
        period
    } else {
        s.len()
    }
}

/// Plug-in Shannon entropy of the character distribution, in bits per character.
fn shannon_bits(s: &[char]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in s {
        *counts.entry(*c).or_insert(0usize) += 1;
    }
    let n = s.len() as f64;
    counts.values().map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum()
}

/// The smallest usual key alphabet holding every character, or `None` outside printable ASCII.
fn alphabet_size(s: &[char]) -> Option<u32> {
    let all = |f: fn(&char) -> bool| s.iter().all(f);
    if all(|c| c.is_ascii_digit()) {
        Some(10)
    } else if all(|c| c.is_ascii_digit() || ('a'..='f').contains(c))
        || all(|c| c.is_ascii_digit() || ('A'..='F').contains(c))
    {
        Some(16)
    } else if all(char::is_ascii_alphanumeric) {
        Some(62)
    } else if all(|c| c.is_ascii_alphanumeric() || "+/-_=".contains(*c)) {
        Some(64)
    } else if all(|c| c.is_ascii_graphic()) {
        Some(94)
    } else {
        None
    }
}

/// The mean plug-in Shannon entropy (bits per character) of `n` uniform draws from `k`
/// symbols: −k · Σ_c P(count = c) · (c/n) · log2(c/n), with binomial counts.
fn expected_shannon_bits(n: usize, k: u32) -> f64 {
    let (n_f, p) = (n as f64, 1.0 / f64::from(k));
    let mut ln_choose = 0.0f64; // ln C(n, c), built up term by term
    let mut sum = 0.0;
    for c in 1..=n {
        ln_choose += ((n - c + 1) as f64).ln() - (c as f64).ln();
        let prob = (ln_choose + c as f64 * p.ln() + (n - c) as f64 * (1.0 - p).ln()).exp();
        let share = c as f64 / n_f;
        sum += prob * share * share.log2();
    }
    -f64::from(k) * sum
}

impl KeyRing {
    pub fn new(secrets: &[String]) -> Result<KeyRing, TokenError> {
        let mut keys = Vec::with_capacity(secrets.len());
        for s in secrets {
            let bits = estimated_bits(s);
            if bits < 128.0 {
                return Err(TokenError::WeakKey(format!(
                    "{} has about {bits:.0} bits of entropy; at least 128 are needed (e.g. 32 random hex characters)",
                    kid_for(s)
                )));
            }
            let kid = kid_for(s);
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.clone());
            let header = serde_json::to_vec(&header).map_err(|_| TokenError::Signing)?;
            keys.push(SigningKey {
                kid,
                digest: Sha256::digest(s.as_bytes()).into(),
                mac: <Hmac<Sha256> as hmac::Mac>::new_from_slice(s.as_bytes()).map_err(|_| TokenError::Signing)?,
                header: URL_SAFE_NO_PAD.encode(header),
                dec: DecodingKey::from_secret(s.as_bytes()).map_err(|_| TokenError::Signing)?,
            });
        }
        if keys.is_empty() {
            return Err(TokenError::WeakKey("list is empty".into()));
        }
        Ok(KeyRing { keys })
    }

    /// The key equal to `presented`, compared in constant time: digests of equal length are
    /// compared, and every key is compared whatever matched before.
    pub fn authenticate(&self, presented: &str) -> Option<&SigningKey> {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(k);
            }
        }
        found
    }

    pub fn primary(&self) -> &SigningKey {
        // `new` refuses an empty ring, so there is always a first key.
        &self.keys[0]
    }

    fn by_kid(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

/// Validated properties of a token to be issued (long names, only those set).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenProps(pub Map<String, Value>);

impl TokenProps {
    pub fn validate(props: &Map<String, Value>) -> Result<TokenProps, TokenError> {
        let out = properties::validate(PROPERTIES, props, false)?;
        if let Some(room) = out.get("room_name").and_then(Value::as_str) {
            if crate::rooms::validate_name(room).is_err() {
                return Err(properties::bad("room_name", "is not a valid room name").into());
            }
        }
        Ok(TokenProps(out))
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(Value::as_i64)
    }

    pub fn is_owner(&self) -> bool {
        self.0.get("is_owner").and_then(Value::as_bool).unwrap_or(false)
    }
}

/// Signs `props` as a Daily-style token: compact claims plus `d` (domain), `iat` and `jti`,
/// with the key's `kid` in the header.
pub fn sign(
    key: &SigningKey,
    props: &TokenProps,
    domain_id: &str,
    iat_secs: i64,
    jti: &str,
) -> Result<String, TokenError> {
    sign_for(key, props, Some(domain_id), iat_secs, jti)
}

/// [`sign`], with the domain claim optional (offline minting before any server has run).
pub fn sign_for(
    key: &SigningKey,
    props: &TokenProps,
    domain_id: Option<&str>,
    iat_secs: i64,
    jti: &str,
) -> Result<String, TokenError> {
    // The claims as a JSON object with sorted keys (what a `Map` writes), a later claim of the
    // same name in place of an earlier one, without copying the properties into a map.
    let (d, iat, jti) = (domain_id.map(Value::from), Value::from(iat_secs), Value::from(jti));
    let mut claims: Vec<(&str, &Value)> = Vec::with_capacity(props.0.len() + 3);
    for (long, v) in &props.0 {
        claims.push((COMPACT.iter().find(|(l, _)| l == long).map_or(long.as_str(), |(_, c)| c), v));
    }
    claims.extend(d.as_ref().map(|d| ("d", d)));
    claims.extend([("iat", &iat), ("jti", &jti)]);
    claims.sort_by_key(|(name, _)| *name); // stable: of equal names, the later stays later
    let last_of_each =
        claims.iter().enumerate().filter(|(i, (name, _))| claims.get(i + 1).is_none_or(|(next, _)| next != name));
    let mut json = Vec::with_capacity(256);
    serde::Serializer::collect_map(&mut serde_json::Serializer::new(&mut json), last_of_each.map(|(_, (n, v))| (n, v)))
        .map_err(|_| TokenError::Signing)?;
    // What `jsonwebtoken::encode` writes (a test holds it to that, byte for byte), without
    // serializing the header and keying HMAC again for every token.
    let mut jwt = String::with_capacity(key.header.len() + json.len() * 4 / 3 + 48);
    jwt.push_str(&key.header);
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(json, &mut jwt);
    let mut mac = key.mac.clone();
    hmac::Mac::update(&mut mac, jwt.as_bytes());
    let signature = hmac::Mac::finalize(mac).into_bytes();
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
    Ok(jwt)
}

/// A token whose signature, algorithm, key and domain check out. Time and room are the
/// caller's to check, with [`Claims::time_status`].
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Claims,
    /// `kid` of the key that verified it.
    pub kid: String,
    /// What revocation is keyed by: the `jti`, or `sha256:<hex>` of the token when it has none.
    pub token_id: String,
}

/// The claims Gatehouse acts on, from compact or long names. Unknown claims are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub room: Option<String>,
    pub user_name: Option<String>,
    pub user_id: Option<String>,
    pub is_owner: bool,
    pub nbf: Option<f64>,
    pub exp: Option<f64>,
    pub iat: Option<f64>,
    pub jti: Option<String>,
    pub eject_at_token_exp: bool,
    pub eject_after_elapsed: Option<u64>,
    pub permissions: Option<Value>,
    /// UI-only properties, long names, carried through.
    pub ui: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeStatus {
    Valid,
    NotYetValid,
    Expired,
}

impl Claims {
    /// `nbf`/`exp` against `now_ms`, with `leeway_s` of tolerance on both sides.
    pub fn time_status(&self, now_ms: i64, leeway_s: u64, ignore_nbf: bool) -> TimeStatus {
        let now = now_ms as f64 / 1000.0;
        let leeway = leeway_s as f64;
        if let Some(exp) = self.exp {
            if now >= exp + leeway {
                return TimeStatus::Expired;
            }
        }
        match self.nbf {
            Some(nbf) if !ignore_nbf && now + leeway < nbf => TimeStatus::NotYetValid,
            _ => TimeStatus::Valid,
        }
    }

    /// True when the token may manage participants: owner, or `canAdmin` true or naming `participants`.
    pub fn can_admin_participants(&self) -> bool {
        can_admin_participants(self.is_owner, self.permissions.as_ref())
    }

    /// The properties with Daily's long names, as `GET /v1/meeting-tokens/:token` shows them.
    pub fn to_long_json(&self) -> serde_json::Map<String, Value> {
        let mut m = self.ui.clone();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("room_name", self.room.clone().map(Value::from));
        put("user_name", self.user_name.clone().map(Value::from));
        put("user_id", self.user_id.clone().map(Value::from));
        put("is_owner", Some(Value::from(self.is_owner)));
        put("nbf", self.nbf.map(number));
        put("exp", self.exp.map(number));
        put("eject_at_token_exp", self.eject_at_token_exp.then_some(Value::Bool(true)));
        put("eject_after_elapsed", self.eject_after_elapsed.map(Value::from));
        put("permissions", self.permissions.clone());
        m
    }
}

/// Whole numbers print as integers, as Daily does.
fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// Verifies signature (HS256 only), key and domain. `domain_id` is this server's; a `d` claim
/// naming another domain is refused.
pub fn verify(ring: &KeyRing, domain_id: &str, token: &str) -> Result<Verified, Rejection> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| Rejection::Malformed("the header is not a JWT header with a supported algorithm".into()))?;
    if header.alg != Algorithm::HS256 {
        return Err(Rejection::Algorithm);
    }
    let candidates: Vec<&SigningKey> = match header.kid.as_deref() {
        Some(kid) => vec![ring.by_kid(kid).ok_or(Rejection::UnknownKey)?],
        None => ring.keys.iter().collect(),
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    for key in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.dec, &validation) {
            Ok(data) => {
                check_claims(&data.claims)?;
                let claims = parse_claims(&data.claims)?;
                if let Some(d) = data.claims.get("d") {
                    if d.as_str() != Some(domain_id) {
                        return Err(Rejection::WrongDomain);
                    }
                }
                let token_id = claims.jti.clone().unwrap_or_else(|| token_hash(token));
                return Ok(Verified { claims, kid: key.kid.clone(), token_id });
            }
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => continue,
            Err(_) => return Err(Rejection::Malformed("the payload is not a JSON object of claims".into())),
        }
    }
    Err(Rejection::BadSignature)
}

/// `sha256:<hex>` of a token: how tokens without `jti` are named in revocations and logs.
pub fn token_hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A short, non-secret name for a token in logs and events: its `jti` or a hash prefix.
pub fn short_id(token_id: &str) -> &str {
    token_id.get(..23).unwrap_or(token_id)
}

/// Holds a verified token's claims to the rules `POST /v1/meeting-tokens` applies, whoever
/// minted it: every property it carries (by compact or long name) must be one the API would
/// accept, with the same types, lengths, characters and ranges; `iat` a unix time; `jti` short
/// plain text. Messages name the claim and the rule, never the value.
fn check_claims(c: &Map<String, Value>) -> Result<(), Rejection> {
    let refuse = |name: &str, problem: String| Rejection::InvalidClaim(format!("claim '{name}' {problem}"));
    let problem = |e: PropertyError| match e {
        PropertyError::Bad { problem, .. } => problem,
        PropertyError::Unknown(n) => format!("is unknown ({n})"),
    };
    let (mut nbf, mut exp) = (None, None);
    for (name, v) in c {
        let Some(&(long, kind, short)) = claim_names().get(name.as_str()) else { continue };
        // Under both names, the compact one is the one read (and checked).
        if v.is_null() || (name != short && c.get(short).is_some_and(|s| !s.is_null())) {
            continue;
        }
        properties::check(long, kind, v).map_err(|e| refuse(name, problem(e)))?;
        match long {
            "room_name" if v.as_str().is_some_and(|r| crate::rooms::validate_name(r).is_err()) => {
                return Err(refuse(name, "is not a valid room name".into()));
            }
            "nbf" => nbf = v.as_f64().map(f64::trunc),
            "exp" => exp = v.as_f64().map(f64::trunc),
            _ => {}
        }
    }
    if let (Some(n), Some(e)) = (nbf, exp) {
        if n >= e {
            return Err(refuse("nbf", "must be before exp".into()));
        }
    }
    if let Some(iat) = claim(c, "iat", "iat") {
        properties::check("iat", Kind::UnixSecs, iat).map_err(|e| refuse("iat", problem(e)))?;
    }
    match claim(c, "jti", "jti") {
        None => Ok(()),
        Some(Value::String(j)) if properties::is_plain_text(j, 255) => Ok(()),
        Some(_) => Err(refuse("jti", "must be a string of at most 255 characters without control characters".into())),
    }
}

/// Every claim name a token property may travel under (compact and long) → (long name, kind,
/// compact name).
fn claim_names() -> &'static std::collections::HashMap<&'static str, (&'static str, Kind, &'static str)> {
    static NAMES: std::sync::OnceLock<std::collections::HashMap<&'static str, (&'static str, Kind, &'static str)>> =
        std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        for (long, kind) in PROPERTIES {
            let short = COMPACT.iter().find(|(l, _)| l == long).map_or(*long, |(_, s)| *s);
            m.insert(*long, (*long, *kind, short));
            m.insert(short, (*long, *kind, short));
        }
        m
    })
}

fn claim<'a>(c: &'a Map<String, Value>, short: &str, long: &str) -> Option<&'a Value> {
    c.get(short).or_else(|| c.get(long)).filter(|v| !v.is_null())
}

fn string_claim(
    c: &Map<String, Value>,
    short: &str,
    long: &str,
    name: &'static str,
) -> Result<Option<String>, Rejection> {
    match claim(c, short, long) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::BadClaim(name)),
    }
}

fn time_claim(c: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, Rejection> {
    match claim(c, name, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()).map(Some).ok_or(Rejection::BadClaim(name)),
        Some(_) => Err(Rejection::BadClaim(name)),
    }
}

fn bool_claim(c: &Map<String, Value>, short: &str, long: &str, name: &'static str) -> Result<bool, Rejection> {
    match claim(c, short, long) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Rejection::BadClaim(name)),
    }
}

fn parse_claims(c: &Map<String, Value>) -> Result<Claims, Rejection> {
    let eje = match claim(c, "eje", "eject_after_elapsed") {
        None => None,
        Some(v) => {
            Some(v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).ok_or(Rejection::BadClaim("eje"))?.ceil() as u64)
        }
    };
    let ui = PROPERTIES
        .iter()
        .filter(|(long, _)| !COMPACT.iter().any(|(l, _)| l == long))
        .filter_map(|(long, _)| c.get(*long).map(|v| (long.to_string(), v.clone())))
        .chain(
            [
                ("ss", "enable_screenshare"),
                ("vo", "start_video_off"),
                ("ao", "start_audio_off"),
                ("er", "enable_recording"),
            ]
            .iter()
            .filter_map(|(s, l)| claim(c, s, l).map(|v| (l.to_string(), v.clone()))),
        )
        .collect();
    Ok(Claims {
        room: string_claim(c, "r", "room_name", "r")?,
        user_name: string_claim(c, "u", "user_name", "u")?,
        user_id: string_claim(c, "ud", "user_id", "ud")?,
        is_owner: bool_claim(c, "o", "is_owner", "o")?,
        nbf: time_claim(c, "nbf")?,
        exp: time_claim(c, "exp")?,
        iat: time_claim(c, "iat")?,
        jti: string_claim(c, "jti", "jti", "jti")?,
        eject_at_token_exp: bool_claim(c, "ejt", "eject_at_token_exp", "ejt")?,
        eject_after_elapsed: eje,
        permissions: claim(c, "p", "permissions").cloned(),
        ui,
    })
}

/// An owner, or permissions whose `canAdmin` is `true` or names `participants` (a token's, or a
/// session's as they stand now).
pub fn can_admin_participants(owner: bool, permissions: Option<&Value>) -> bool {
    owner
        || match permissions.and_then(|p| p.get("canAdmin")) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some("participants")),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    /// A token signed here is byte for byte what `jsonwebtoken::encode` makes of the same header
    /// and claims, and verifies.
    #[test]
    fn signing_writes_what_jsonwebtoken_writes() {
        let ring = ring();
        let props = json!({"room_name": "r", "user_name": "é\"x", "is_owner": true, "exp": 4102444800i64});
        let props = TokenProps::validate(props.as_object().unwrap()).unwrap();
        let jwt = sign(ring.primary(), &props, DOMAIN, 1_700_000_000, "jti-1").unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(ring.primary().kid.clone());
        let claims = json!({"r": "r", "u": "é\"x", "o": true, "exp": 4102444800i64, "d": DOMAIN, "iat": 1_700_000_000, "jti": "jti-1"});
        let expected =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(KEY.as_bytes()).unwrap()).unwrap();
        assert_eq!(jwt, expected);
        let v = verify(&ring, DOMAIN, &jwt).unwrap();
        assert_eq!(v.claims.user_name.as_deref(), Some("é\"x"));
        assert_eq!(v.token_id, "jti-1");
    }

    const KEY: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const DOMAIN: &str = "6f1c1a52-0000-4000-8000-000000000000";

    fn ring() -> KeyRing {
        KeyRing::new(&[KEY.to_string()]).unwrap()
    }

    fn offline(claims: Value, alg: Algorithm, key: &str) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn weak_keys_refused() {
        for weak in [
            "short".to_string(),
            "a".repeat(64),
            "a".repeat(2000),
            "ab".repeat(100),
            "0123456789abcdef".repeat(4),
            "Password1!".repeat(10),
            format!("{}b", "a".repeat(80)),
            "correct-horse-battery-staple-zebra".into(),
            // 31 hex characters: 124 bits at best.
            "0f3a9c2e7b5d1864af0e93c7d2b5a18".into(),
        ] {
            assert!(
                KeyRing::new(std::slice::from_ref(&weak)).is_err(),
                "{weak} accepted ({} bits)",
                estimated_bits(&weak)
            );
        }
        assert!(KeyRing::new(&[KEY.into()]).is_ok());
    }

    #[test]
    fn random_keys_accepted() {
        // 32 hex (128 bits), 64 hex (`keys generate`), 43 base64url and 44 base64 (256 bits),
        // from a seeded generator so a run is repeatable.
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let b: [u8; 32] = rng.random();
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            use base64::Engine;
            for key in [
                hex[..32].to_string(),
                hex.clone(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
                base64::engine::general_purpose::STANDARD.encode(b),
            ] {
                assert!(estimated_bits(&key) >= 128.0, "{key}: {} bits", estimated_bits(&key));
            }
        }
    }

    #[test]
    fn periods_and_alphabets() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(smallest_period(&chars("abcabcab")), 3);
        assert_eq!(smallest_period(&chars("abcabd")), 6);
        assert_eq!(smallest_period(&chars("")), 0);
        assert_eq!(alphabet_size(&chars("09af")), Some(16));
        assert_eq!(alphabet_size(&chars("09aF")), Some(62));
        assert_eq!(alphabet_size(&chars("a-b_")), Some(64));
        assert_eq!(alphabet_size(&chars("a b")), None);
        assert!((expected_shannon_bits(32, 16) - 3.611).abs() < 0.01);
        assert_eq!(estimated_bits(""), 0.0);
        assert_eq!(estimated_bits("é".repeat(50).as_str()), 0.0);
    }

    #[test]
    fn authenticate_is_exact() {
        let r = ring();
        assert!(r.authenticate(KEY).is_some());
        assert!(r.authenticate(&KEY[1..]).is_none());
        assert!(r.authenticate("").is_none());
    }

    #[test]
    fn issued_token_round_trips() {
        let r = ring();
        let props = TokenProps::validate(
            json!({"room_name": "hello", "is_owner": true, "exp": 2000000000, "enable_prejoin_ui": true})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        let t = sign(r.primary(), &props, DOMAIN, 1_700_000_000, "jti-1").unwrap();
        let v = verify(&r, DOMAIN, &t).unwrap();
        assert_eq!(v.claims.room.as_deref(), Some("hello"));
        assert!(v.claims.is_owner);
        assert_eq!(v.token_id, "jti-1");
        assert_eq!(v.claims.to_long_json()["enable_prejoin_ui"], json!(true));
        assert_eq!(v.claims.to_long_json()["exp"], json!(2000000000));
        assert_eq!(verify(&r, "other-domain", &t).unwrap_err(), Rejection::WrongDomain);
    }

    #[test]
    fn offline_token_without_kid_or_iat() {
        let t = offline(json!({"r": "hello", "d": DOMAIN, "ud": "u1"}), Algorithm::HS256, KEY);
        let v = verify(&ring(), DOMAIN, &t).unwrap();
        assert_eq!(v.claims.user_id.as_deref(), Some("u1"));
        assert!(v.token_id.starts_with("sha256:"));
    }

    #[test]
    fn refusals() {
        let r = ring();
        let other = offline(json!({"r": "x"}), Algorithm::HS256, "ffffffffffffffffffffffffffffffffffffffff");
        assert_eq!(verify(&r, DOMAIN, &other).unwrap_err(), Rejection::BadSignature);
        let hs384 = offline(json!({"r": "x"}), Algorithm::HS384, KEY);
        assert_eq!(verify(&r, DOMAIN, &hs384).unwrap_err(), Rejection::Algorithm);
        let string_exp = offline(json!({"exp": "2000000000"}), Algorithm::HS256, KEY);
        assert!(
            matches!(verify(&r, DOMAIN, &string_exp).unwrap_err(), Rejection::InvalidClaim(m) if m.contains("'exp'"))
        );
        // alg "none": header {"alg":"none","typ":"JWT"}, payload {}, empty signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.e30.";
        assert!(matches!(verify(&r, DOMAIN, none).unwrap_err(), Rejection::Malformed(_)));
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("nope".into());
        let unknown = jsonwebtoken::encode(&h, &json!({}), &EncodingKey::from_secret(KEY.as_bytes()).unwrap()).unwrap();
        assert_eq!(verify(&r, DOMAIN, &unknown).unwrap_err(), Rejection::UnknownKey);
        let good = offline(json!({"r": "x"}), Algorithm::HS256, KEY);
        let tampered = good.replace(".eyJ", ".eyK");
        assert!(verify(&r, DOMAIN, &tampered).is_err());
        assert!(verify(&r, DOMAIN, "garbage").is_err());
    }

    #[test]
    fn time_checks_are_ours() {
        let c = Claims { nbf: Some(100.0), exp: Some(200.5), ..Default::default() };
        assert_eq!(c.time_status(99_999, 0, false), TimeStatus::NotYetValid);
        assert_eq!(c.time_status(99_999, 0, true), TimeStatus::Valid);
        assert_eq!(c.time_status(100_000, 0, false), TimeStatus::Valid);
        assert_eq!(c.time_status(200_499, 0, false), TimeStatus::Valid);
        assert_eq!(c.time_status(200_500, 0, false), TimeStatus::Expired);
        assert_eq!(c.time_status(200_500, 1, false), TimeStatus::Valid);
    }
}
