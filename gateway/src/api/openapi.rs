//! The OpenAPI 3.0 document served at `/openapi.json`.

use serde_json::{json, Value};

fn op(summary: &str, role: &str, ok: &str, body: Option<&str>) -> Value {
    let mut v = json!({
        "summary": summary,
        "description": format!("Requires the `{role}` role."),
        "security": [{"bearer": []}],
        "responses": {
            ok: {"description": "success"},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
        }
    });
    if let Some(schema) = body {
        v["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
        });
    }
    v
}

fn path_param(name: &str, desc: &str) -> Value {
    json!([{"name": name, "in": "path", "required": true, "description": desc, "schema": {"type": "string"}}])
}

fn list_devices() -> Value {
    let mut v = op("List devices", "viewer", "200", None);
    v["parameters"] = json!([
        {"name": "fleet", "in": "query", "schema": {"type": "string"}},
        {"name": "online", "in": "query", "schema": {"type": "boolean"}},
        {"name": "tag", "in": "query", "schema": {"type": "string"}, "description": "NAME or NAME=VALUE"},
    ]);
    v
}

/// The document.
pub(crate) fn document() -> Value {
    let uuid = path_param("uuid", "device uuid, 32 hex characters");
    let fleet = path_param("name", "fleet name");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "edge gateway management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Fleets, devices, public URLs, API tokens and the audit log. Errors are always {\"error\":{\"code\",\"message\"}}."
        },
        "paths": {
            "/v1/fleets": {
                "get": op("List fleets", "viewer", "200", None),
                "post": op("Create a fleet", "admin", "201", Some("NewFleet")),
            },
            "/v1/fleets/{name}": {
                "parameters": fleet,
                "get": op("Show a fleet and its devices", "viewer", "200", None),
                "delete": op("Delete an empty fleet", "admin", "204", None),
            },
            "/v1/fleets/{name}/public-url": {
                "parameters": fleet,
                "put": op("Switch the public URL of every device in the fleet now, and the default for devices that join later", "admin", "200", Some("Switch")),
            },
            "/v1/devices": {
                "get": list_devices(),
                "post": op("Register a device ahead of provisioning (optionally with a chosen uuid and fleet)", "admin", "201", Some("Register")),
            },
            "/v1/devices/{uuid}/tags": {
                "parameters": uuid,
                "get": op("The device's tags", "viewer", "200", None),
                "put": op("Replace the device's tags", "operator", "200", Some("Tags")),
            },
            "/v1/devices/{uuid}/env": {
                "parameters": uuid,
                "get": op("Device-level environment variables (device-wide and per service)", "viewer", "200", None),
                "put": op("Replace device-level environment variables", "operator", "200", Some("Env")),
            },
            "/v1/fleets/{name}/env": {
                "parameters": path_param("name", "fleet name"),
                "get": op("Fleet-level environment variables (fleet-wide and per service)", "viewer", "200", None),
                "put": op("Replace fleet-level environment variables", "admin", "200", Some("Env")),
            },
            "/v1/devices/{uuid}": {
                "parameters": uuid,
                "get": op("Show a device", "viewer", "200", None),
                "patch": op("Rename a device or move it to another fleet (its identity is kept)", "operator", "200", Some("DevicePatch")),
                "delete": op("Delete (revoke) a device: its tunnel is closed and its certificate refused", "admin", "204", None),
            },
            "/v1/devices/{uuid}/public-url": {
                "parameters": uuid,
                "put": op("Switch the device's public URL", "operator", "200", Some("Switch")),
            },
            "/v1/fleets/{name}/keys": {
                "parameters": fleet,
                "get": op("List the fleet's provisioning keys (never their secrets)", "admin", "200", None),
                "post": op("Create a provisioning key; the key string (gateway address, CA fingerprint, secret) is shown once", "admin", "201", Some("NewKey")),
            },
            "/v1/keys/{id}": {
                "parameters": path_param("id", "provisioning key id"),
                "delete": op("Revoke a provisioning key", "admin", "204", None),
            },
            "/v1/devices/{uuid}/actions": {
                "parameters": uuid,
                "get": op("The device's actions, newest first", "viewer", "200", None),
                "post": op("Queue an action; delivered now if the device is online, else when it reconnects within ttl_secs", "operator", "202", Some("NewAction")),
            },
            "/v1/actions/{id}": {
                "parameters": path_param("id", "action id"),
                "get": op("One action and its status: pending, delivered, succeeded, failed or expired", "viewer", "200", None),
            },
            "/v1/tokens": {
                "get": op("List API tokens (never their secrets)", "admin", "200", None),
                "post": op("Create an API token; the secret is shown once", "admin", "201", Some("NewToken")),
            },
            "/v1/tokens/{id}": {
                "parameters": path_param("id", "token id"),
                "delete": op("Revoke an API token", "admin", "204", None),
            },
            "/v1/audit": {
                "get": op("Audit log, newest first (`before`, `limit` for paging)", "admin", "200", None),
            },
            "/v1/fleets/{name}/releases": {
                "parameters": fleet,
                "get": op("A fleet's releases, newest first, and its pin", "viewer", "200", None),
                "post": op("Publish a compose file as a release (201; 200 when the same content exists; 422 with line and key when invalid)", "operator", "201", Some("NewRelease")),
            },
            "/v1/releases/{id}": {
                "parameters": path_param("id", "release id"),
                "get": op("A release with its compose text", "viewer", "200", None),
            },
            "/v1/releases/{id}/target": {
                "parameters": path_param("id", "release id"),
                "get": op("The target state the release gives its fleet (fleet variables merged)", "viewer", "200", None),
            },
            "/v1/fleets/{name}/pin": {
                "parameters": fleet,
                "put": op("Pin the fleet to a release (`{\"release\": null}` tracks the latest)", "operator", "200", Some("Pin")),
            },
            "/v1/devices/{uuid}/pin": {
                "parameters": uuid.clone(),
                "put": op("Pin a device to a release of its fleet (`null` follows the fleet)", "operator", "200", Some("Pin")),
            },
            "/v1/devices/{uuid}/target": {
                "parameters": uuid.clone(),
                "get": op("The device's target state and where its release comes from", "viewer", "200", None),
            },
            "/v1/devices/{uuid}/state": {
                "parameters": uuid.clone(),
                "get": op("Target release beside the device's reported update state (per-service status, download progress)", "viewer", "200", None),
            },
            "/v1/devices/{uuid}/logs": {
                "parameters": uuid.clone(),
                "get": op("Stored log lines, oldest first; query: since, until (unix ms or a duration ago like 1h), service, stderr, system, q (text), after (id), tail (newest N), limit", "viewer", "200", None),
            },
            "/v1/devices/{uuid}/logs/export": {
                "parameters": uuid.clone(),
                "get": op("Every matching line as NDJSON (same filters)", "viewer", "200", None),
            },
            "/v1/devices/{uuid}/logs/stream": {
                "parameters": uuid.clone(),
                "get": op("Live tail as Server-Sent Events (id = line id; Last-Event-ID or after= resumes; tail= sends a backlog first)", "viewer", "200", None),
            },
            "/v1/devices/{uuid}/logs/ws": {
                "parameters": uuid.clone(),
                "get": op("Live tail over WebSocket, one JSON line per text message", "viewer", "101", None),
            },
            "/v1/devices/{uuid}/terminal": {
                "parameters": uuid.clone(),
                "get": op("WebSocket terminal on the device (`service` query: a container; else the host). Binary messages are bytes; text messages are control JSON ({\"type\":\"resize\",\"cols\",\"rows\"}); the token may be given as ?token=", "operator", "101", None),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            },
            "schemas": {
                "NewRelease": {
                    "type": "object",
                    "required": ["compose"],
                    "properties": {"compose": {"type": "string", "description": "the compose file's text"}}
                },
                "Pin": {
                    "type": "object",
                    "required": ["release"],
                    "properties": {"release": {"type": "string", "nullable": true}}
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "description": "stable machine-readable code, e.g. not_found, forbidden, invalid_json"},
                            "message": {"type": "string"}
                        }
                    }}
                },
                "NewFleet": {"type": "object", "additionalProperties": false, "required": ["name"],
                    "properties": {"name": {"type": "string"}, "public_url_default": {"type": "boolean"}}},
                "Switch": {"type": "object", "additionalProperties": false, "required": ["enabled"],
                    "properties": {"enabled": {"type": "boolean"}}},
                "DevicePatch": {"type": "object", "additionalProperties": false,
                    "properties": {"name": {"type": "string"}, "fleet": {"type": "string", "nullable": true}}},
                "NewKey": {"type": "object", "additionalProperties": false,
                    "properties": {"expires_in_secs": {"type": "integer", "minimum": 1}, "max_uses": {"type": "integer", "minimum": 1}}},
                "Register": {"type": "object", "additionalProperties": false,
                    "properties": {"uuid": {"type": "string"}, "fleet": {"type": "string"}}},
                "NewAction": {"type": "object", "additionalProperties": false, "required": ["action"],
                    "properties": {
                        "action": {"type": "string", "enum": super::ACTIONS},
                        "params": {"type": "object", "description": "appId, serviceName, patch (host-config)"},
                        "force": {"type": "boolean"},
                        "ttl_secs": {"type": "integer", "minimum": 1, "default": 86400}
                    }},
                "Tags": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "tag name → value"},
                "Env": {"type": "object", "additionalProperties": false,
                    "properties": {
                        "vars": {"type": "object", "additionalProperties": {"type": "string"}},
                        "services": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": {"type": "string"}}}
                    }},
                "NewToken": {"type": "object", "additionalProperties": false, "required": ["name", "role"],
                    "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}}},
            }
        }
    })
}
