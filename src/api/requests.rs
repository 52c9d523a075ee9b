//! Request bodies: one type per endpoint that takes one, read by [`wire::read`] and described
//! by the same type in the OpenAPI document (a route's `Doc::body` names the type, schemars
//! derives its schema), so what the server accepts and what it documents cannot drift.
//!
//! Every type refuses fields it does not name (`deny_unknown_fields`, which the schema says as
//! `additionalProperties: false`): the error names the field ("unknown parameter 'x'"). A field
//! whose own rules say more than its JSON type (a room's `privacy`, a ban's `ban_until`…) is read
//! as JSON and checked by its handler, which keeps the error texts clients rely on; its schema
//! still gives the type (`schemars(with = …)`).
//!
//! Must not: validate beyond JSON types (handlers and `properties` do, with their own texts).
//!
//! [`wire::read`]: super::wire::read

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// `"public"` or `"private"` (the handler reads the JSON and says what is wrong with it).
type Privacy = crate::rooms::PrivacyName;

/// `POST /v1/rooms`, and each room of `POST /v1/batch/rooms`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomWrite {
    /// Omitted or null: a random name.
    pub name: Option<String>,
    #[schemars(with = "Option<Privacy>")]
    pub privacy: Option<Value>,
    /// Room properties (see docs/API.md).
    pub properties: Option<Map<String, Value>>,
}

/// `POST /v1/rooms/:name`: what changes (a property set to null is removed).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomUpdate {
    #[schemars(with = "Option<Privacy>")]
    pub privacy: Option<Value>,
    pub properties: Option<Map<String, Value>>,
}

/// `POST /v1/batch/rooms`: 1 to 1,000 rooms, created all or none.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRooms {
    #[schemars(with = "Vec<RoomWrite>", length(min = 1, max = 1000))]
    pub rooms: Option<Value>,
}

/// `DELETE /v1/batch/rooms`: 1 to 1,000 room names, deleted all or none.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRoomNames {
    #[schemars(with = "Vec<String>", length(min = 1, max = 1000))]
    pub room_names: Option<Value>,
}

/// `POST /v1/` (domain settings): properties to change (null removes one).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainWrite {
    pub properties: Option<Map<String, Value>>,
}

/// `POST /v1/meeting-tokens`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Token properties (see docs/API.md).
    pub properties: Option<Map<String, Value>>,
}

/// `POST /v1/meeting-tokens/revoke`: exactly one of `jti`; `token`; `room_name` with
/// `user_id`; `room_name` with `issued_before` (unix seconds).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    pub jti: Option<String>,
    pub token: Option<String>,
    pub room_name: Option<String>,
    pub user_id: Option<String>,
    #[schemars(with = "Option<f64>")]
    pub issued_before: Option<Value>,
}

/// `POST /v1/rooms/:name/join`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// A meeting token; none for a public room.
    pub token: Option<String>,
    pub user_name: Option<String>,
}

/// `POST /v1/rooms/:name/pre-auth`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreAuth {
    pub token: Option<String>,
}

/// `POST /v1/rooms/:name/eject`: sessions by id, and by user id; a ban keeps those users out
/// (until `ban_until`, unix seconds, if given).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Eject {
    #[schemars(with = "Option<Vec<String>>", length(max = 100))]
    pub ids: Option<Value>,
    #[schemars(with = "Option<Vec<String>>", length(max = 100))]
    pub user_ids: Option<Value>,
    #[schemars(with = "Option<bool>")]
    pub ban: Option<Value>,
    #[schemars(with = "Option<i64>")]
    pub ban_until: Option<Value>,
}

/// `POST /v1/rooms/:name/update-permissions`: per participant id (or `"*"`), the
/// permissions to change (`Permissions`: `properties::check_permissions` reads them, and the
/// schema of what it takes is written beside the answers' in `openapi.rs`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePermissions {
    #[schemars(schema_with = "permissions_by_id")]
    pub data: Option<Value>,
}

fn permissions_by_id(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1000,
        "additionalProperties": {"$ref": "#/components/schemas/Permissions"}
    })
}

/// `POST /v1/rooms/:name/waiting-participants`: per waiting participant id (or `"*"`), 1 to
/// 1,000 of them, whether to let them in. Read as an object by its handler (the keys are ids).
#[derive(JsonSchema)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1000))]
#[allow(dead_code)]
pub struct WaitingDecisions(BTreeMap<String, Decision>);

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, non_snake_case)]
struct Decision {
    grantRequestedAccess: bool,
}

/// `POST /v1/rooms/:name/send-app-message`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppMessage {
    /// Any JSON value, at most 4 KB as JSON.
    pub data: Option<Value>,
    /// `"*"` (everyone in the call, the default) or a session id.
    pub recipient: Option<String>,
}

/// `POST /v1/rooms/:name/set-session-data`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SetSessionData {
    pub data: Option<Map<String, Value>>,
    #[schemars(with = "Option<MergeStrategy>")]
    pub merge_strategy: Option<String>,
    #[schemars(with = "Option<Vec<String>>")]
    pub keys_to_delete: Option<Value>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
enum MergeStrategy {
    Replace,
    ShallowMerge,
}

/// `POST /v1/webhooks` (`url` required) and `POST /v1/webhooks/:id`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookWrite {
    pub url: Option<String>,
    #[schemars(with = "Option<Vec<String>>")]
    pub event_types: Option<Value>,
    /// Base64 of at least 16 bytes: the signing secret.
    pub hmac: Option<String>,
    /// Absent: unchanged; null: none.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    pub basic_auth: Option<Value>,
    pub retry_type: Option<String>,
}

/// A field that may be null: `Some(Value::Null)` when it is, `None` only when absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `POST /v1/webhooks/:id/replay`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    #[schemars(with = "Option<u64>")]
    pub from_seq: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::super::routes::ROUTES;
    use super::super::wire::typed;
    use super::*;
    use serde_json::json;

    fn refused<T: serde::de::DeserializeOwned>(body: Value) -> String {
        let Value::Object(m) = body else { panic!("not an object") };
        match typed::<T>(m) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.info,
        }
    }

    #[test]
    fn every_declared_body_is_a_derived_schema_that_refuses_unknown_fields() {
        let doc = super::super::openapi::document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for r in ROUTES {
            let Some(body) = r.doc.body else { continue };
            let name = body.name();
            let s = schemas.get(&name).unwrap_or_else(|| panic!("{}: no derived schema {name}", r.label));
            if name != "WaitingDecisions" {
                assert_eq!(s["additionalProperties"], false, "{name} must refuse unknown fields");
            }
        }
    }

    #[test]
    fn refusals_are_worded_as_the_api_words_them() {
        assert_eq!(refused::<RoomWrite>(json!({"nmae": "x"})), "unknown parameter 'nmae'");
        assert_eq!(refused::<RoomWrite>(json!({"name": 5})), "'name' must be a string");
        assert_eq!(refused::<RoomWrite>(json!({"properties": []})), "'properties' must be an object");
        assert_eq!(refused::<Join>(json!({"user_name": true})), "'user_name' must be a string");
        // null is absent, for every optional field.
        let Value::Object(m) = json!({"name": null, "privacy": null}) else { unreachable!() };
        let r: RoomWrite = typed(m).unwrap();
        assert!(r.name.is_none() && r.privacy.is_none());
        // basicAuth: null clears it, absent leaves it.
        let Value::Object(m) = json!({"basicAuth": null}) else { unreachable!() };
        assert_eq!(typed::<WebhookWrite>(m).unwrap().basic_auth, Some(Value::Null));
        assert_eq!(typed::<WebhookWrite>(Map::new()).unwrap().basic_auth, None);
    }
}
