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
