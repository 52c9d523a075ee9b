//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the HTTP API. Its operations come from the
//! route table (each route declares who may call it, its summary, body, answers and parameters);
//! every schema is derived (schemars) from the types the route declares: the request bodies
//! (`requests.rs`, as the server reads them) and the answers (`responses.rs`, as it writes
//! them). Only Daily's permissions object, which `properties` checks by hand, is written here.
//! `tests/openapi.rs` checks that every route the router answers is documented and CI runs
//! schemathesis against a live server with it (5xx, schema and status mismatches fail).

use schemars::generate::{Contract, SchemaSettings};
use schemars::SchemaGenerator;
use serde_json::{json, Value};

use super::routes::{Access, Answer, Param, Schema, ROUTES};

/// Schemas as `$ref`s into the document's components, for requests (what the server reads)
/// or for answers (what it writes: an optional field it always writes is required).
fn generator(contract: Contract) -> SchemaGenerator {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.contract = contract;
    settings.into_generator()
}

/// A JSON answer of this type.
fn reply(desc: &str, schema: Schema, g: &mut SchemaGenerator) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": (schema.generate)(g)}}})
}

fn err(desc: &str, g: &mut SchemaGenerator) -> Value {
    reply(desc, Schema::of::<super::responses::Error>(), g)
}

/// The answers every authenticated call can give besides its own.
fn common(mut own: Value, g: &mut SchemaGenerator) -> Value {
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
        o.entry(code).or_insert_with(|| err(desc, g));
    }
    own
}

fn body(schema: Schema, g: &mut SchemaGenerator) -> Value {
    json!({"required": false, "content": {"application/json": {"schema": (schema.generate)(g)}}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn query(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

fn op(summary: &str, params: Vec<Value>, request: Option<Value>, responses: Value, g: &mut SchemaGenerator) -> Value {
    let mut o = json!({"summary": summary, "parameters": params, "responses": common(responses, g), "security": [{"bearer": []}]});
    if let Some(r) = request {
        o["requestBody"] = r;
    }
    o
}

fn sse() -> Value {
    json!({"description": "text/event-stream", "content": {"text/event-stream": {"schema": {}}}})
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
/// call it, its summary, body, answers and parameters) is all this says of it. The schemas
/// of the types it names are collected by `requests` and `answers`.
fn paths(requests: &mut SchemaGenerator, answers: &mut SchemaGenerator) -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let d = &r.doc;
        let success = match d.answer {
            Answer::Json(schema) => reply("OK", schema, answers),
            Answer::Sse => sse(),
            Answer::Text => {
                json!({"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}})
            }
            Answer::Binary => {
                json!({"description": "backup file", "content": {"application/octet-stream": {"schema": {"type": "string"}}}})
            }
            Answer::Page | Answer::Relayed | Answer::Hook | Answer::Undocumented => continue,
        };
        let mut responses = json!({"200": success});
        for o in d.also {
            responses[o.status] = reply(o.when, o.schema, answers);
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
            let request = d.body.map(|b| body(b, requests));
            let mut o = op(d.summary, params, request, responses, answers);
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
    let mut requests = generator(Contract::Deserialize);
    let mut answers = generator(Contract::Serialize);
    let paths = paths(&mut requests, &mut answers);
    let mut schemas = answers.take_definitions(true);
    schemas.extend(requests.take_definitions(true));
    schemas.insert("Permissions".into(), permissions());
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Gatehouse", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Daily-compatible rooms, meeting tokens, presence, ejection and webhooks. Extensions are marked (ext)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key; for participant calls a meeting token or session secret."}},
            "schemas": schemas,
        },
        "paths": paths,
    })
}

/// Daily's permissions object, which `properties::check_permissions` reads by hand (its
/// texts name what is wrong) and `update-permissions` takes by participant.
fn permissions() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "hasPresence": {"type": "boolean"},
        "canSend": {"oneOf": [{"type": "boolean"}, {"type": "array", "uniqueItems": true, "items": {"enum": ["video", "audio", "screenVideo", "screenAudio", "customVideo", "customAudio"]}}]},
        "canAdmin": {"oneOf": [{"type": "boolean"}, {"type": "array", "uniqueItems": true, "items": {"enum": ["participants", "streaming", "transcription"]}}]},
        "canReceive": {"type": "object", "additionalProperties": false, "properties": {"base": {"type": ["boolean", "object"]}, "byUserId": {"type": "object"}, "byParticipantId": {"type": "object"}}}}})
}
