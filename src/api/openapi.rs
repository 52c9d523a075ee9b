//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the HTTP API. Kept next to the router;
//! `tests/openapi.rs` checks that every route the router answers is documented and CI runs
//! schemathesis against a live server with it (5xx, schema and status mismatches fail).

use serde_json::{json, Value};

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
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

/// A participant-facing operation: no API key (a token or session secret instead).
fn public(mut o: Value) -> Value {
    o["security"] = json!([]);
    o
}

fn sse() -> Value {
    json!({"description": "text/event-stream", "content": {"text/event-stream": {"schema": {}}}})
}

fn open_object() -> Value {
    json!({"type": "object", "additionalProperties": true})
}

/// The document.
pub fn document() -> Value {
    let name = || path_param("name");
    let id = || path_param("id");
    let limit = |max: u32| query("limit", json!({"type": "integer", "minimum": 1, "maximum": max}));
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
                "RoomWrite": {"type": "object", "properties": {"name": {"type": ["string", "null"]}, "privacy": {"enum": ["public", "private", null]}, "properties": {"type": ["object", "null"]}}},
                "RoomList": {"type": "object", "required": ["total_count", "data"], "properties": {"total_count": {"type": "integer"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}}}},
                "Deleted": open_object(),
                "BatchRooms": {"type": "object", "required": ["rooms"], "properties": {"rooms": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/RoomWrite"}}}},
                "BatchCreated": {"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}}}},
                "BatchRoomNames": {"type": "object", "required": ["room_names"], "properties": {"room_names": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "string"}}}},
                "BatchDeleted": {"type": "object", "required": ["deleted_count"], "properties": {"deleted_count": {"type": "integer"}}},
                "AppMessage": {"type": "object", "additionalProperties": false, "properties": {"data": {}, "recipient": {"type": "string"}}},
                "AppMessageSent": {"type": "object", "required": ["sent"], "properties": {"sent": {"const": "true"}, "recipients": {"type": "integer"}}},
                "SessionData": {"type": "object", "required": ["data"], "properties": {"data": open_object()}},
                "SetSessionData": {"type": "object", "additionalProperties": false, "properties": {"data": {"type": ["object", "null"]},
                                   "mergeStrategy": {"enum": ["replace", "shallow-merge", null]}, "keysToDelete": {"type": ["array", "null"], "items": {"type": "string"}}}},
                "SessionDataSet": {"type": "object", "required": ["sent", "data"], "properties": {"sent": {"const": "true"}, "data": open_object()}},
                "DomainWrite": {"type": "object", "properties": {"properties": {"type": ["object", "null"]}}},
                "Object": open_object(),
                "Domain": {"type": "object", "required": ["domain_id"], "properties": {"domain_id": {"type": "string"}, "domain_name": {"type": "string"}, "config": open_object()}},
                "TokenRequest": {"type": "object", "properties": {"properties": {"type": ["object", "null"]}}},
                "TokenResponse": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
                "TokenList": {"type": "object", "required": ["data", "has_more"], "properties": {"data": {"type": "array", "items": open_object()}, "has_more": {"type": "boolean"}}},
                "Revoke": {"type": "object", "properties": {"jti": {"type": "string"}, "token": {"type": "string"}, "room_name": {"type": "string"}, "user_id": {"type": "string"}, "issued_before": {"type": "number"}}},
                "Revoked": {"type": "object", "required": ["revoked", "ejectedIds"], "properties": {"revoked": {"type": "boolean"}, "ejectedIds": {"type": "array", "items": {"type": "string"}}}},
                "Join": {"type": "object", "properties": {"token": {"type": ["string", "null"]}, "user_name": {"type": ["string", "null"]}}},
                "Joined": {"type": "object", "required": ["session_id", "session_secret", "room", "joined_at", "will_eject_at", "owner"],
                           "properties": {"session_id": {"type": "string"}, "session_secret": {"type": "string"}, "room": {"type": "string"},
                                          "user_id": {"type": ["string", "null"]}, "user_name": {"type": ["string", "null"]}, "owner": {"type": "boolean"},
                                          "joined_at": {"type": "number"}, "will_eject_at": {"type": ["integer", "null"]}, "permissions": open_object()}},
                "PreAuth": {"type": "object", "properties": {"token": {"type": ["string", "null"]}}},
                "Access": {"type": "object", "required": ["room", "access"], "properties": {"room": {"type": "string"},
                           "access": {"type": "object", "required": ["level"], "properties": {"level": {"enum": ["full", "lobby", "none"]}}},
                           "error": {"type": "string"}, "info": {"type": "string"}}},
                "Permissions": {"type": "object", "additionalProperties": false, "properties": {
                    "hasPresence": {"type": "boolean"},
                    "canSend": {"oneOf": [{"type": "boolean"}, {"type": "array", "uniqueItems": true, "items": {"enum": ["video", "audio", "screenVideo", "screenAudio", "customVideo", "customAudio"]}}]},
                    "canAdmin": {"oneOf": [{"type": "boolean"}, {"type": "array", "uniqueItems": true, "items": {"enum": ["participants", "streaming", "transcription"]}}]},
                    "canReceive": {"type": "object", "additionalProperties": false, "properties": {"base": {"type": ["boolean", "object"]}, "byUserId": {"type": "object"}, "byParticipantId": {"type": "object"}}}}},
                "UpdatePermissions": {"type": "object", "additionalProperties": false, "required": ["data"],
                                      "properties": {"data": {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/components/schemas/Permissions"}}}},
                "PermissionsSent": {"type": "object", "required": ["status", "updated"], "properties": {"status": {"const": "sent"}, "updated": {"type": "array", "items": {"type": "string"}}}},
                "WaitingList": {"type": "object", "required": ["total_count", "data"], "properties": {"total_count": {"type": "integer"}, "data": {"type": "array", "items": open_object()}}},
                "WaitingDecisions": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "object", "required": ["grantRequestedAccess"], "additionalProperties": false, "properties": {"grantRequestedAccess": {"type": "boolean"}}}},
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
                "Eject": {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
                          "user_ids": {"type": "array", "items": {"type": "string"}, "maxItems": 100}, "ban": {"type": "boolean"}, "ban_until": {"type": "integer"}}},
                "Ejected": {"type": "object", "required": ["ejectedIds"], "properties": {"ejectedIds": {"type": "array", "items": {"type": "string"}}}},
                "Events": {"type": "object", "required": ["data", "next_after", "has_more", "head_seq"],
                           "properties": {"data": {"type": "array", "items": open_object()}, "next_after": {"type": "integer"}, "has_more": {"type": "boolean"}, "head_seq": {"type": "integer"}}},
                "Webhook": {"type": "object", "required": ["uuid", "url", "hmac", "retryType", "eventTypes", "state", "failedCount", "createdAt", "updatedAt"],
                            "properties": {"uuid": {"type": "string"}, "url": {"type": "string"}, "hmac": {"type": "string"}, "basicAuth": {"type": ["string", "null"]},
                                           "retryType": {"enum": ["circuit-breaker", "exponential"]}, "eventTypes": {"type": "array", "items": {"type": "string"}},
                                           "state": {"enum": ["ACTIVE", "FAILED", "INACTIVE"]}, "failedCount": {"type": "integer"},
                                           "lastMomentPushed": {"type": ["string", "null"]}, "createdAt": {"type": "string"}, "updatedAt": {"type": "string"}}},
                "WebhookWrite": {"type": "object", "properties": {"url": {"type": "string"}, "eventTypes": {"type": "array", "items": {"type": "string"}},
                                 "hmac": {"type": "string"}, "basicAuth": {"type": ["string", "null"]}, "retryType": {"type": "string"}}},
                "WebhookList": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}},
                "Replay": {"type": "object", "properties": {"from_seq": {"type": "integer"}}},
            }
        },
        "paths": {
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": ok("Object")}}},
            "/readyz": {"get": {"summary": "Store open and writable, timers loaded", "responses": {"200": ok("Object"), "503": ok("Object")}}},
            "/metrics": {"get": op("Prometheus metrics (text)", vec![], None, json!({"200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}}))},
            "/v1/": {
                "get": op("The domain (its id is the `d` claim of tokens)", vec![], None, json!({"200": ok("Domain")})),
                "post": op("Change the domain settings (defaults for rooms created afterwards; null removes one)", vec![], Some(body("DomainWrite")), json!({"200": ok("Domain")}))
            },
            "/v1/batch/rooms": {
                "post": op("Create up to 1,000 rooms, all or none", vec![], Some(body("BatchRooms")), json!({"200": ok("BatchCreated")})),
                "delete": op("Delete up to 1,000 rooms, all or none", vec![], Some(body("BatchRoomNames")), json!({"200": ok("BatchDeleted")}))
            },
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": ok("Object")}}},
            "/v1/rooms": {
                "get": op("List rooms, newest first", vec![limit(100), query("starting_after", json!({"type": "string"})), query("ending_before", json!({"type": "string"}))], None, json!({"200": ok("RoomList")})),
                "post": op("Create a room (no name: a random one)", vec![], Some(body("RoomWrite")), json!({"200": ok("Room")}))
            },
            "/v1/rooms/{name}": {
                "get": op("Get a room", vec![name()], None, json!({"200": ok("Room")})),
                "post": op("Update a room (null removes a property)", vec![name()], Some(body("RoomWrite")), json!({"200": ok("Room")})),
                "delete": op("Delete a room (everyone present is ejected)", vec![name()], None, json!({"200": ok("Deleted")}))
            },
            "/v1/rooms/{name}/join": {"post": public(op("Join (a token or none for public rooms)", vec![name()], Some(body("Join")), json!({"200": ok("Joined"), "403": err("refused: not-allowed, nbf-room, exp-room, nbf-token, exp-token, meeting-full, ejected"), "429": err("too many join attempts")})))},
            "/v1/rooms/{name}/pre-auth": {"post": public(op("(ext) What a join would get now: full, lobby (knock-to-join) or none", vec![name()], Some(body("PreAuth")), json!({"200": ok("Access"), "429": err("too many join attempts")})))},
            "/v1/rooms/{name}/update-permissions": {"post": op("Update present participants' permissions (API key, or an admin token of the room)", vec![name()], Some(body("UpdatePermissions")), json!({"200": ok("PermissionsSent"), "403": err("not allowed")}))},
            "/v1/rooms/{name}/waiting-participants": {
                "get": op("(ext) Who waits in the room's lobby (API key, or an admin token of the room)", vec![name()], None, json!({"200": ok("WaitingList"), "403": err("not allowed")})),
                "post": op("(ext) Admit or deny waiting participants", vec![name()], Some(body("WaitingDecisions")), json!({"200": ok("WaitingDecided"), "403": err("not allowed")}))
            },
            "/v1/rooms/{name}/eject": {"post": op("Eject sessions (API key, or an owner token of the room)", vec![name()], Some(body("Eject")), json!({"200": ok("Ejected"), "403": err("not allowed to eject")}))},
            "/v1/rooms/{name}/send-app-message": {"post": op("Send a message to the session streams of those in the call now (not stored)", vec![name()], Some(body("AppMessage")), json!({"200": ok("AppMessageSent")}))},
            "/v1/rooms/{name}/get-session-data": {"get": op("The running meeting's session data", vec![name()], None, json!({"200": ok("SessionData")}))},
            "/v1/rooms/{name}/set-session-data": {"post": op("Set the running meeting's session data (replace or shallow-merge)", vec![name()], Some(body("SetSessionData")), json!({"200": ok("SessionDataSet")}))},
            "/v1/rooms/{name}/presence": {"get": op("Who is in the room", vec![name()], None, json!({"200": ok("Presence")}))},
            "/v1/rooms/{name}/bans": {"get": op("(ext) Bans of the room in force, in user id order, a page at a time", vec![name(), limit(1000), query("starting_after", json!({"type": "string"}))], None, json!({"200": ok("BanList")}))},
            "/v1/rooms/{name}/bans/{user_id}": {"delete": op("(ext) Lift a ban", vec![name(), path_param("user_id")], None, json!({"200": ok("Deleted")}))},
            "/v1/presence": {"get": op("Everyone present, by room", vec![], None, json!({"200": ok("Object")}))},
            "/v1/sessions/{id}/heartbeat": {"post": op("Keep a session's lease (session secret)", vec![id()], None, json!({"200": ok("Object")}))},
            "/v1/sessions/{id}/leave": {"post": op("Leave (session secret)", vec![id()], None, json!({"200": ok("Object")}))},
            "/v1/sessions/{id}/stream": {"get": op("SSE: presence changes and this session's end (session secret)", vec![id()], None, json!({"200": sse()}))},
            "/v1/meeting-tokens": {
                "get": op("(ext) Issued tokens", vec![limit(100), query("room_name", json!({"type": "string"})), query("starting_after", json!({"type": "string"}))], None, json!({"200": ok("TokenList")})),
                "post": op("Create a meeting token", vec![], Some(body("TokenRequest")), json!({"200": ok("TokenResponse")}))
            },
            "/v1/meeting-tokens/{token}": {"get": op("Validate a token", vec![path_param("token"), query("ignoreNbf", json!({"type": "boolean"})), query("verbose", json!({"type": "boolean"}))], None, json!({"200": ok("Object")}))},
            "/v1/meeting-tokens/revoke": {"post": op("(ext) Revoke tokens", vec![], Some(body("Revoke")), json!({"200": ok("Revoked")}))},
            "/v1/events": {"get": op("The durable event log", vec![query("after", json!({"type": "integer", "minimum": 0})), limit(1000), query("types", json!({"type": "string"})), query("wait", json!({"type": "integer", "minimum": 0, "maximum": 60}))], None, json!({"200": ok("Events"), "410": err("position older than the retained log")}))},
            "/v1/events/stream": {"get": op("SSE of the event log", vec![query("after", json!({"type": "integer", "minimum": 0})), query("types", json!({"type": "string"}))], None, json!({"200": sse(), "410": err("position older than the retained log")}))},
            "/v1/webhooks": {
                "get": op("List webhooks", vec![], None, json!({"200": ok("WebhookList")})),
                "post": op("Create a webhook (the URL must answer a test POST with 2xx)", vec![], Some(body("WebhookWrite")), json!({"200": ok("Webhook")}))
            },
            "/v1/webhooks/{id}": {
                "get": op("Get a webhook", vec![id()], None, json!({"200": ok("Webhook")})),
                "post": op("Update and re-activate a webhook", vec![id()], Some(body("WebhookWrite")), json!({"200": ok("Webhook")})),
                "delete": op("Delete a webhook", vec![id()], None, json!({"200": ok("Deleted")}))
            },
            "/v1/webhooks/{id}/replay": {"post": op("(ext) Move the cursor back", vec![id()], Some(body("Replay")), json!({"200": ok("Webhook"), "410": err("position older than the retained log")}))},
            "/v1/webhooks/{id}/attempts": {"get": op("(ext) Failed attempts", vec![id()], None, json!({"200": ok("Object")}))},
            "/v1/meetings": {"get": op("Meetings, newest first", vec![
                query("room", json!({"type": "string"})), query("timeframe_start", json!({"type": "integer", "minimum": 0})),
                query("timeframe_end", json!({"type": "integer", "minimum": 0})), query("ongoing", json!({"type": "boolean"})),
                query("no_participants", json!({"type": "boolean"})), limit(100),
                query("starting_after", json!({"type": "string"})), query("ending_before", json!({"type": "string"}))], None, json!({"200": ok("MeetingList")}))},
            "/v1/meetings/{id}": {"get": op("A meeting", vec![id()], None, json!({"200": ok("Meeting")}))},
            "/v1/meetings/{id}/participants": {"get": op("A meeting's participants, in join order", vec![id(), limit(1000),
                query("joined_after", json!({"type": "string"})), query("joined_before", json!({"type": "string"}))], None, json!({"200": ok("MeetingParticipants")}))},
            "/v1/backup": {"get": op("(ext) A consistent backup, streamed", vec![], None, json!({"200": {"description": "backup file", "content": {"application/octet-stream": {"schema": {"type": "string"}}}}}))}
        }
    })
}
