//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the HTTP API. Its operations come from the
//! route table (each route declares who may call it, its summary, body, answers and parameters);
//! the request bodies' schemas are derived from their types (`requests.rs`, schemars), the
//! answers' are written here.
//! `tests/openapi.rs` checks that every route the router answers is documented and CI runs
//! schemathesis against a live server with it (5xx, schema and status mismatches fail).

use serde_json::{json, Value};

use super::routes::{Access, Answer, Param, ROUTES};

/// A JSON answer of a component schema.
fn reply(desc: &str, schema: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn err(desc: &str) -> Value {
    reply(desc, "Error")
}

fn ok(schema: &str) -> Value {
    reply("OK", schema)
}

/// The answers every authenticated call can give besides its own.
fn common(mut own: Value) -> Value {
    let o = own.as_object_mut().expect("responses are objects"); // cannot fail: callers pass object literals
    for (code, desc) in [
        ("400", "bad request (malformed JSON, wrong types, unknown parameters, bad Authorization header)"),
        ("401", "missing or unknown API key"),
        ("404", "not found"),
        ("405", "method not allowed"),
        ("413", "body over the limit"),
        ("500", "internal error"),
        ("503", "the store cannot accept writes; nothing was saved"),
    ] {
        o.entry(code).or_insert_with(|| err(desc));
    }
    own
}

fn body(schema: &str) -> Value {
    json!({"required": false, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn query(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

fn op(summary: &str, params: Vec<Value>, request: Option<Value>, responses: Value) -> Value {
    let mut o =
        json!({"summary": summary, "parameters": params, "responses": common(responses), "security": [{"bearer": []}]});
    if let Some(r) = request {
        o["requestBody"] = r;
    }
    o
}

fn sse() -> Value {
    json!({"description": "text/event-stream", "content": {"text/event-stream": {"schema": {}}}})
}

fn open_object() -> Value {
    json!({"type": "object", "additionalProperties": true})
}

/// The OpenAPI path of a route pattern (`/v1/rooms/:name` → `/v1/rooms/{name}`; the domain is
/// `/v1/`, as Daily writes it).
fn openapi_path(pattern: &str) -> String {
    if pattern == "/v1" {
        return "/v1/".to_string();
    }
    pattern
        .split('/')
        .map(|seg| seg.strip_prefix(':').map_or(seg.to_string(), |p| format!("{{{p}}}")))
        .collect::<Vec<_>>()
        .join("/")
}

fn param(p: &Param) -> Value {
    match *p {
        Param::Str(name) => query(name, json!({"type": "string"})),
        Param::Bool(name) => query(name, json!({"type": "boolean"})),
        Param::Int(name, min, None) => query(name, json!({"type": "integer", "minimum": min})),
        Param::Int(name, min, Some(max)) => query(name, json!({"type": "integer", "minimum": min, "maximum": max})),
    }
}

/// Every API operation, from the route table: what each route declares of itself (who may
/// call it, its summary, body, answers and parameters) is all this says of it.
fn paths() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let d = &r.doc;
        let success = match d.answer {
            Answer::Json(schema) => ok(schema),
            Answer::Sse => sse(),
            Answer::Text => {
                json!({"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}})
            }
            Answer::Binary => {
                json!({"description": "backup file", "content": {"application/octet-stream": {"schema": {"type": "string"}}}})
            }
            Answer::Page | Answer::Undocumented => continue,
        };
        let mut responses = json!({"200": success});
        for o in d.also {
            responses[o.status] = reply(o.when, o.schema);
        }
        let operation = if r.access == Access::Public {
            json!({"summary": d.summary, "responses": responses})
        } else {
            let params: Vec<Value> = r
                .path
                .split('/')
                .filter_map(|seg| seg.strip_prefix(':'))
                .map(path_param)
                .chain(d.query.iter().map(param))
                .collect();
            let mut o = op(d.summary, params, d.body.map(body), responses);
            if !r.access.needs_bearer() {
                o["security"] = json!([]);
            }
            o
        };
        let entry = paths.entry(openapi_path(r.path)).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_lowercase()] = operation;
    }
    Value::Object(paths)
}

/// The document.
pub fn document() -> Value {
    let mut doc = answers();
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.extend(super::requests::schemas());
    }
    doc
}

/// The document with the answers' schemas, written here (the request bodies' are derived from
/// their types in `requests.rs`).
fn answers() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Gatehouse", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Daily-compatible rooms, meeting tokens, presence, ejection and webhooks. Extensions are marked (ext)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key; for participant calls a meeting token or session secret."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "info"], "properties": {"error": {"type": "string"}, "info": {"type": "string"}}, "additionalProperties": true},
                "Room": {"type": "object", "required": ["id", "name", "privacy", "url", "created_at", "config"],
                         "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "api_created": {"type": "boolean"},
                                        "privacy": {"enum": ["public", "private"]}, "url": {"type": "string"}, "created_at": {"type": "string"}, "config": open_object()}},
                "RoomList": {"type": "object", "required": ["total_count", "data"], "properties": {"total_count": {"type": "integer"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}}}},
                "Deleted": open_object(),
                "BatchCreated": {"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}}}},
                "BatchDeleted": {"type": "object", "required": ["deleted_count"], "properties": {"deleted_count": {"type": "integer"}}},
                "AppMessageSent": {"type": "object", "required": ["sent"], "properties": {"sent": {"const": "true"}, "recipients": {"type": "integer"}}},
                "SessionData": {"type": "object", "required": ["data"], "properties": {"data": open_object()}},
                "SessionDataSet": {"type": "object", "required": ["sent", "data"], "properties": {"sent": {"const": "true"}, "data": open_object()}},
                "Object": open_object(),
                "Domain": {"type": "object", "required": ["domain_id"], "properties": {"domain_id": {"type": "string"}, "domain_name": {"type": "string"}, "config": open_object()}},
                "TokenResponse": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
                "TokenList": {"type": "object", "required": ["data", "has_more"], "properties": {"data": {"type": "array", "items": open_object()}, "has_more": {"type": "boolean"}}},
                "Revoked": {"type": "object", "required": ["revoked", "ejectedIds"], "properties": {"revoked": {"type": "boolean"}, "ejectedIds": {"type": "array", "items": {"type": "string"}}}},
                "Joined": {"type": "object", "required": ["session_id", "session_secret", "room", "joined_at", "will_eject_at", "owner"],
                           "properties": {"session_id": {"type": "string"}, "session_secret": {"type": "string"}, "room": {"type": "string"},
                                          "user_id": {"type": ["string", "null"]}, "user_name": {"type": ["string", "null"]}, "owner": {"type": "boolean"},
                                          "joined_at": {"type": "number"}, "will_eject_at": {"type": ["integer", "null"]}, "permissions": open_object()}},
                "Access": {"type": "object", "required": ["room", "access"], "properties": {"room": {"type": "string"},
                           "access": {"type": "object", "required": ["level"], "properties": {"level": {"enum": ["full", "lobby", "none"]}}},
                           "error": {"type": "string"}, "info": {"type": "string"}}},
                "Permissions": {"type": "object", "additionalProperties": false, "properties": {
                    "hasPresence": {"type": "boolean"},
                    "canSend": {"oneOf": [{"type": "boolean"}, {"type": "array", "uniqueItems": true, "items": {"enum": ["video", "audio", "screenVideo", "screenAudio", "customVideo", "customAudio"]}}]},
                    "canAdmin": {"oneOf": [{"type": "boolean"}, {"type": "array", "uniqueItems": true, "items": {"enum": ["participants", "streaming", "transcription"]}}]},
                    "canReceive": {"type": "object", "additionalProperties": false, "properties": {"base": {"type": ["boolean", "object"]}, "byUserId": {"type": "object"}, "byParticipantId": {"type": "object"}}}}},
                "PermissionsSent": {"type": "object", "required": ["status", "updated"], "properties": {"status": {"const": "sent"}, "updated": {"type": "array", "items": {"type": "string"}}}},
                "WaitingList": {"type": "object", "required": ["total_count", "data"], "properties": {"total_count": {"type": "integer"}, "data": {"type": "array", "items": open_object()}}},
                "WaitingDecided": {"type": "object", "required": ["ids", "granted", "denied", "refused"], "properties": {
                    "ids": {"type": "array", "items": {"type": "string"}}, "granted": {"type": "array", "items": {"type": "string"}},
                    "denied": {"type": "array", "items": {"type": "string"}}, "refused": {"type": "array", "items": open_object()}}},
                "Meeting": {"type": "object", "required": ["id", "room", "start_time", "duration", "ongoing", "max_participants"], "properties": {
                    "id": {"type": "string"}, "room": {"type": "string"}, "start_time": {"type": "integer"}, "duration": {"type": "integer"},
                    "ongoing": {"type": "boolean"}, "max_participants": {"type": "integer"}, "participants": {"type": "array", "items": {"$ref": "#/components/schemas/MeetingParticipant"}}}},
                "MeetingParticipant": {"type": "object", "required": ["participant_id", "join_time", "duration", "user_id", "user_name"], "properties": {
                    "participant_id": {"type": "string"}, "user_id": {"type": ["string", "null"]}, "user_name": {"type": ["string", "null"]},
                    "join_time": {"type": "integer"}, "duration": {"type": "integer"}}},
                "MeetingList": {"type": "object", "required": ["total_count", "data"], "properties": {"total_count": {"type": "integer"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Meeting"}}}},
                "MeetingParticipants": {"type": "object", "required": ["total_count", "data"], "properties": {"total_count": {"type": "integer"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/MeetingParticipant"}}}},
                "Presence": {"type": "object", "required": ["total_count", "data"], "properties": {"total_count": {"type": "integer"}, "data": {"type": "array", "items": open_object()}}},
                "Ban": {"type": "object", "required": ["user_id", "until", "created_at", "by"], "properties": {
                    "user_id": {"type": "string"}, "until": {"type": ["integer", "null"]}, "created_at": {"type": "string"}, "by": {"type": "string"}}},
                "BanList": {"type": "object", "required": ["total_count", "data", "has_more"], "properties": {
                    "total_count": {"type": "integer"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Ban"}}, "has_more": {"type": "boolean"}}},
                "Ejected": {"type": "object", "required": ["ejectedIds"], "properties": {"ejectedIds": {"type": "array", "items": {"type": "string"}}}},
                "Events": {"type": "object", "required": ["data", "next_after", "has_more", "head_seq"],
                           "properties": {"data": {"type": "array", "items": open_object()}, "next_after": {"type": "integer"}, "has_more": {"type": "boolean"}, "head_seq": {"type": "integer"}}},
                "Webhook": {"type": "object", "required": ["uuid", "url", "hmac", "retryType", "eventTypes", "state", "failedCount", "createdAt", "updatedAt"],
                            "properties": {"uuid": {"type": "string"}, "url": {"type": "string"}, "hmac": {"type": "string"}, "basicAuth": {"type": ["string", "null"]},
                                           "retryType": {"enum": ["circuit-breaker", "exponential"]}, "eventTypes": {"type": "array", "items": {"type": "string"}},
                                           "state": {"enum": ["ACTIVE", "FAILED", "INACTIVE"]}, "failedCount": {"type": "integer"},
                                           "lastMomentPushed": {"type": ["string", "null"]}, "createdAt": {"type": "string"}, "updatedAt": {"type": "string"}}},
                "WebhookList": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}},
            }
        },
        "paths": paths(),
    })
}
