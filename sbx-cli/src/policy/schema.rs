//! The JSON Schema of policy format v1, for editors (yaml-language-server) and review tools.
//! It describes the shape; sbx's own checks are stricter (host name rules, CIDR host bits, port
//! ranges in strings) and are what `sbx check` enforces.

use serde_json::{Value, json};

use super::document::{MAX_DNS_ATTEMPTS, MAX_DNS_TIMEOUT};

pub fn schema() -> Value {
    let entries = |what: &str| {
        json!({
            "description": what,
            "type": ["array", "null"],
            "items": { "$ref": "#/$defs/entry" }
        })
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:sbx:policy:v1",
        "title": "sbx policy, version 1",
        "description": "What a command run with `sbx apply` may reach on the network. See docs/policy.md.",
        "type": "object",
        "additionalProperties": false,
        "required": ["version"],
        "properties": {
            "version": { "description": "Format version; only 1 exists.", "const": 1 },
            "name": {
                "description": "Defaults to the file name without extension.",
                "type": "string",
                "minLength": 1
            },
            "description": { "type": "string" },
            "extends": {
                "description": "Files merged before this one, in order; paths are relative to this file.",
                "type": "array",
                "items": { "type": "string", "minLength": 1 }
            },
            "network": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "mode": {
                        "description": "none: loopback only. allowlist: loopback, `allow` minus `deny`, and sbx's DNS. open: everything but `deny`.",
                        "enum": ["none", "allowlist", "open"]
                    },
                    "allow": entries("Destinations the command may reach (mode: allowlist only)."),
                    "deny": entries("Destinations the command may never reach; deny wins over allow in every mode.")
                },
                "if": {
                    "required": ["mode"],
                    "properties": { "mode": { "enum": ["none", "open"] } }
                },
                "then": { "properties": { "allow": { "type": ["array", "null"], "maxItems": 0 } } }
            },
            "dns": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "servers": {
                        "description": "`system` (the host's /etc/resolv.conf), `IP`, `IP:PORT` or `[IPv6]:PORT`.",
                        "type": "array",
                        "items": { "type": "string", "minLength": 1 }
                    },
                    "timeout": {
                        "description": format!("Per query, with a unit: `2s`, `500ms`; at most {}s.", MAX_DNS_TIMEOUT.as_secs()),
                        "type": "string"
                    },
                    "attempts": { "type": "integer", "minimum": 1, "maximum": MAX_DNS_ATTEMPTS },
                    "grace": {
                        "description": "How long an address sbx's DNS service answered stays reachable past the answer's TTL: `30s` (default); at most 10m.",
                        "type": "string"
                    },
                    "on_resolve_failure": {
                        "description": "error: a host name that does not resolve stops sbx (default). warn: run anyway.",
                        "enum": ["error", "warn"]
                    }
                }
            }
        },
        "$defs": {
            "entry": {
                "oneOf": [
                    {
                        "description": "host[:port], *.domain[:port], IP, IP:port, [IPv6]:port, CIDR, CIDR:port, [IPv6CIDR]:port. A port means TCP; no port means every port and protocol.",
                        "type": "string",
                        "minLength": 1,
                        "pattern": "^\\S+$",
                        "not": { "pattern": "://" }
                    },
                    {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "host": { "description": "A host name or `*.domain` wildcard.", "type": "string" },
                            "ip": { "description": "An IPv4 or IPv6 address.", "type": "string" },
                            "cidr": { "description": "A CIDR block with no host bits set.", "type": "string" },
                            "ports": {
                                "description": "Ports and inclusive ranges (\"8000-8100\"); all ports when left out.",
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "oneOf": [
                                        { "type": "integer", "minimum": 1, "maximum": 65535 },
                                        { "type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$" }
                                    ]
                                }
                            },
                            "protocol": {
                                "description": "Defaults to tcp when `ports` is given, else any.",
                                "enum": ["tcp", "udp", "any"]
                            }
                        },
                        "oneOf": [
                            { "required": ["host"] },
                            { "required": ["ip"] },
                            { "required": ["cidr"] }
                        ]
                    }
                ]
            }
        }
    })
}
