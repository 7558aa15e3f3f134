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
                "NewToken": {"type": "object", "additionalProperties": false, "required": ["name", "role"],
                    "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}}},
            }
        }
    })
}
