//! One file: the OpenAPI document is one value.
//!
//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, written by hand. The
//! tests hold it against the router's route table, both ways, and check every `$ref`.

use std::sync::LazyLock;

use axum::Json;
use serde_json::{Value, json};

pub static DOCUMENT: LazyLock<Value> = LazyLock::new(build);

pub async fn document() -> Json<Value> {
    Json(DOCUMENT.clone())
}

fn reference(kind: &str, name: &str) -> Value {
    json!({ "$ref": format!("#/components/{kind}/{name}") })
}

fn schema(name: &str) -> Value {
    reference("schemas", name)
}

fn response(name: &str) -> Value {
    reference("responses", name)
}

fn parameter(name: &str) -> Value {
    reference("parameters", name)
}

fn json_body(schema_name: &str, required: bool) -> Value {
    json!({
        "required": required,
        "content": { "application/json": { "schema": schema(schema_name) } }
    })
}

fn json_response(description: &str, schema_name: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema(schema_name) } }
    })
}

fn secured(scope: &str) -> Value {
    json!([{ "oauth2": [scope] }, { "bearer": [scope] }])
}

/// A command route, for [`command`].
struct Command<'a> {
    summary: &'a str,
    description: &'a str,
    scope: &'a str,
    id_param: bool,
    body: Value,
    accepted: &'a str,
    outcome: &'a str,
    extra_errors: &'a [(&'a str, &'a str)],
}

/// A command route: 202 (or 200 after a wait), and every error it can answer.
fn command(c: Command<'_>) -> Value {
    let Command {
        summary,
        description,
        scope,
        id_param,
        body,
        accepted,
        outcome,
        extra_errors,
    } = c;
    let mut parameters = vec![
        parameter("IdempotencyKey"),
        parameter("Wait"),
        parameter("Prefer"),
        parameter("CorrelationId"),
    ];
    if id_param {
        parameters.insert(0, parameter("Id"));
    }
    let mut responses = json!({
        "200": {
            "description": "the outcome was reached within the requested wait",
            "headers": {
                "Idempotent-Replayed": { "$ref": "#/components/headers/IdempotentReplayed" }
            },
            "content": { "application/json": { "schema": schema(outcome) } }
        },
        "202": {
            "description": "the command was acknowledged by Kafka and will be processed",
            "headers": {
                "Location": { "description": "the status URL", "schema": { "type": "string" } },
                "X-Correlation-ID": { "$ref": "#/components/headers/CorrelationId" },
                "Idempotent-Replayed": { "$ref": "#/components/headers/IdempotentReplayed" }
            },
            "content": { "application/json": { "schema": schema(accepted) } }
        },
        "400": response("BadRequest"),
        "401": response("Unauthorized"),
        "403": response("Forbidden"),
        "413": response("PayloadTooLarge"),
        "409": response("IdempotencyKeyInUse"),
        "415": response("UnsupportedMediaType"),
        "422": response("Unprocessable"),
        "429": response("TooManyRequests"),
        "503": response("KafkaUnavailable")
    });
    for (status, name) in extra_errors {
        responses[*status] = response(name);
    }
    json!({
        "tags": ["commands"],
        "summary": summary,
        "description": description,
        "security": secured(scope),
        "parameters": parameters,
        "requestBody": body,
        "responses": responses
    })
}

/// A query passed through to order-view.
fn query(summary: &str, id_param: bool, extra: &[Value]) -> Value {
    let mut parameters: Vec<Value> = Vec::new();
    if id_param {
        parameters.push(parameter("Id"));
    }
    parameters.extend(extra.iter().cloned());
    json!({
        "tags": ["queries"],
        "summary": summary,
        "description": "Answered by order-view: the gateway checks the token and passes the \
            request through (query string included, `access_token` removed); status and body \
            are order-view's.",
        "security": secured("feed:read"),
        "parameters": parameters,
        "responses": {
            "200": json_response("order-view's representation", "View"),
            "400": response("BadRequest"),
            "401": response("Unauthorized"),
            "403": response("Forbidden"),
            "404": response("NotFound"),
            "429": response("TooManyRequests"),
            "503": response("Unavailable")
        }
    })
}

fn build() -> Value {
    let scopes: serde_json::Map<String, Value> = crate::auth::Scope::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(s.describe())))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "feedline gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Identity provider and API gateway of feedline. Commands are \
                validated, published to Kafka as Avro and answered with 202 once the broker \
                acknowledged them; queries and the live feed are order-view's, passed through. \
                Every error has the body `{\"error\": {\"code\", \"message\", \"field\"}}`. \
                Money is a decimal string (\"60.00\") or a JSON number with at most 2 decimals. \
                Clients should send an `Idempotency-Key` with every command and retry a \
                timed-out command with the same key: the retry gets the same ids and answer, \
                and the command takes effect once.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "identity", "description": "access tokens (OAuth 2.0 client credentials)" },
            { "name": "commands", "description": "published to Kafka, processed asynchronously" },
            { "name": "queries", "description": "order-view's read model and live feed" },
            { "name": "static", "description": "dashboard and this document" },
            { "name": "operations", "description": "metrics and health" }
        ],
        "paths": {
            "/": {
                "get": {
                    "tags": ["static"],
                    "summary": "the dashboard page",
                    "parameters": [{
                        "name": "If-None-Match", "in": "header", "required": false,
                        "schema": { "type": "string" }
                    }],
                    "responses": {
                        "200": {
                            "description": "the page, with a strong ETag and Cache-Control: public, max-age=300",
                            "headers": {
                                "ETag": { "schema": { "type": "string" } },
                                "Cache-Control": { "schema": { "type": "string" } }
                            },
                            "content": { "text/html": { "schema": { "type": "string" } } }
                        },
                        "304": { "description": "If-None-Match matched the current ETag" }
                    }
                }
            },
            "/openapi.json": {
                "get": {
                    "tags": ["static"],
                    "summary": "this document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": { "application/json": { "schema": { "type": "object" } } }
                        }
                    }
                }
            },
            "/auth/token": {
                "post": {
                    "tags": ["identity"],
                    "summary": "issue an access token (client credentials grant)",
                    "description": "RFC 6749 §4.4. Client credentials in HTTP Basic or in the \
                        body, not both. Without `scope`, every scope the client may have is \
                        granted. The token is an HS256 JWT whose header names its key (`kid`), \
                        with `iss`, `sub`, `aud`, `iat`, `nbf`, `exp`, `scope`, `jti` and, for a \
                        client bound to a tenant, `tenant`; a client without one is an admin and \
                        its tokens always carry the `admin` scope.",
                    "security": [{}, { "clientBasic": [] }],
                    "requestBody": {
                        "required": true,
                        "content": {
                            "application/x-www-form-urlencoded": { "schema": schema("TokenRequest") },
                            "application/json": { "schema": schema("TokenRequest") }
                        }
                    },
                    "responses": {
                        "200": {
                            "description": "the token (Cache-Control: no-store)",
                            "content": { "application/json": { "schema": schema("TokenResponse") } }
                        },
                        "400": {
                            "description": "invalid_request, unsupported_grant_type or invalid_scope",
                            "content": { "application/json": { "schema": schema("Error") } }
                        },
                        "401": {
                            "description": "invalid_client: unknown client or wrong secret",
                            "content": { "application/json": { "schema": schema("Error") } }
                        },
                        "429": response("TooManyRequests"),
                        "413": response("PayloadTooLarge"),
                        "415": response("UnsupportedMediaType")
                    }
                }
            },
            "/orders": {
                "post": command(Command {
                    summary: "place an order",
                    description: "Publishes PlaceOrder on order-commands (key: customer_id) with a new order_id, \
                        derived from the Idempotency-Key when there is one. A tenant's client may \
                        only order for its tenant's customers (403 forbidden); one order-view does \
                        not show yet is a 404 unknown_customer with Retry-After.",
                    scope: "orders:write",
                    id_param: false,
                    body: json_body("PlaceOrderRequest", true),
                    accepted: "OrderAccepted",
                    outcome: "OrderOutcome",
                    extra_errors: &[("404", "NotFound")],
                }),
                "get": query("list orders", false, &[])
            },
            "/orders/{id}": {
                "get": query("one order", true, &[])
            },
            "/orders/{id}/cancel": {
                "post": command(Command {
                    summary: "cancel an order",
                    description: "Looks the order's customer up in order-view (404 if order-view does not \
                        know the order), then publishes CancelOrder on order-commands. With a \
                        wait, answers 200 once the order is CANCELLED (or REJECTED).",
                    scope: "orders:write",
                    id_param: true,
                    body: json_body("CancelOrderRequest", false),
                    accepted: "OrderAccepted",
                    outcome: "OrderOutcome",
                    extra_errors: &[("404", "NotFound")],
                }),
            },
            "/customers": {
                "post": command(Command {
                    summary: "register a customer",
                    description: "Publishes RegisterCustomer on customer-commands with a new customer_id, derived \
                        from the Idempotency-Key when there is one.",
                    scope: "customers:write",
                    id_param: false,
                    body: json_body("RegisterCustomerRequest", true),
                    accepted: "CustomerAccepted",
                    outcome: "CustomerOutcome",
                    extra_errors: &[],
                })
            },
            "/customers/{id}": {
                "get": query("one customer", true, &[])
            },
            "/customers/{id}/orders": {
                "get": query("a customer's orders", true, &[])
            },
            "/customers/{id}/credit-limit": {
                "put": command(Command {
                    summary: "change a customer's credit limit",
                    description: "Publishes ChangeCreditLimit on customer-commands. With a wait, answers \
                        200 once order-view shows the new limit. A tenant's client may only change \
                        its tenant's customers (403 forbidden).",
                    scope: "customers:write",
                    id_param: true,
                    body: json_body("CreditLimitRequest", true),
                    accepted: "CustomerAccepted",
                    outcome: "CustomerOutcome",
                    extra_errors: &[("404", "NotFound")],
                })
            },
            "/feed": {
                "get": {
                    "tags": ["queries"],
                    "summary": "live feed (Server-Sent Events)",
                    "description": "order-view's feed, streamed through unbuffered. Filters \
                        (`order_id`, `customer_id`, ...) and `Last-Event-ID` are passed on. \
                        Event ids are `<generation>-<seq>`: an id the answering order-view \
                        cannot resume from (another replica's, from before a rebuild) gets a \
                        `snapshot` event first, then the live changes. \
                        Browsers' EventSource cannot send headers: they get a one-use ticket \
                        from POST /feed/ticket and pass it as `?ticket=`. A token in the \
                        query string is refused (400, `field` is `access_token`). A client \
                        may hold a limited number of feeds at once (then 429), and the \
                        gateway serves a limited number in total (then 503). A reader that \
                        stops reading is disconnected after the write timeout; comment lines \
                        keep a quiet feed open.",
                    "security": [
                        { "oauth2": ["feed:read"] },
                        { "bearer": ["feed:read"] },
                        { "feedTicket": [] }
                    ],
                    "parameters": [
                        { "name": "order_id", "in": "query", "required": false, "schema": { "type": "string", "format": "uuid" } },
                        { "name": "customer_id", "in": "query", "required": false, "schema": { "type": "string", "format": "uuid" } },
                        { "name": "ticket", "in": "query", "required": false, "description": "a one-use ticket from POST /feed/ticket", "schema": { "type": "string" } },
                        { "name": "Last-Event-ID", "in": "header", "required": false, "schema": { "type": "string" } }
                    ],
                    "responses": {
                        "200": {
                            "description": "an endless event stream",
                            "content": { "text/event-stream": { "schema": { "type": "string" } } }
                        },
                        "400": response("BadRequest"),
                        "401": response("Unauthorized"),
                        "403": response("Forbidden"),
                        "429": response("TooManyRequests"),
                        "503": response("Unavailable")
                    }
                }
            },
            "/feed/ticket": {
                "post": {
                    "tags": ["queries"],
                    "summary": "a one-use ticket for the live feed",
                    "description": "For browsers, whose EventSource cannot send headers: \
                        `GET /feed?ticket=...` accepts the ticket once, within `expires_in` \
                        seconds, with the rights of the token it was issued for.",
                    "security": secured("feed:read"),
                    "responses": {
                        "200": json_response("the ticket", "FeedTicket"),
                        "401": response("Unauthorized"),
                        "403": response("Forbidden"),
                        "429": response("TooManyRequests"),
                        "503": response("Unavailable")
                    }
                }
            },
            "/fleet": {
                "get": {
                    "tags": ["operations"],
                    "summary": "the platform's instances, and the balancing over order-view",
                    "description": "Every instance of every service as the platform's directory \
                        knows it (from their announcements on the `_services` topic), and the \
                        order-view replicas this gateway balances over. Admins only: it names \
                        internal addresses.",
                    "security": secured("admin"),
                    "responses": {
                        "200": json_response("the fleet", "Fleet"),
                        "401": response("Unauthorized"),
                        "403": response("Forbidden"),
                        "429": response("TooManyRequests")
                    }
                }
            },
            "/ops": {
                "get": {
                    "tags": ["operations"],
                    "summary": "dead letters per DLQ topic, and order-view's freshness",
                    "description": "The messages in every DLQ topic under the topic prefix \
                        (high minus low watermark over its partitions), and p50 and p99 of \
                        `feedline_order_view_freshness_seconds` from the order-view replicas' \
                        `/metrics`, merged over the replicas and estimated from the histogram's \
                        buckets as Prometheus' `histogram_quantile` does (null while no replica \
                        exports it). Cached for two seconds. Admins only: it names topics.",
                    "security": secured("admin"),
                    "responses": {
                        "200": json_response("dead letters and freshness", "Ops"),
                        "401": response("Unauthorized"),
                        "403": response("Forbidden"),
                        "429": response("TooManyRequests")
                    }
                }
            },
            "/metrics": {
                "get": {
                    "tags": ["operations"],
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition",
                            "content": { "text/plain": { "schema": { "type": "string" } } }
                        }
                    }
                }
            },
            "/health": {
                "get": {
                    "tags": ["operations"],
                    "summary": "readiness (the same as /health/ready)",
                    "responses": health_responses("ready", "not ready")
                }
            },
            "/health/ready": {
                "get": {
                    "tags": ["operations"],
                    "summary": "readiness: Kafka reachable, the registry answering",
                    "responses": health_responses("ready", "not ready")
                }
            },
            "/health/live": {
                "get": {
                    "tags": ["operations"],
                    "summary": "liveness: the process is making progress",
                    "responses": health_responses("live", "not live")
                }
            }
        },
        "components": {
            "securitySchemes": {
                "oauth2": {
                    "type": "oauth2",
                    "description": "tokens from POST /auth/token",
                    "flows": { "clientCredentials": { "tokenUrl": "/auth/token", "scopes": scopes } }
                },
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "feedTicket": {
                    "type": "apiKey", "in": "query", "name": "ticket",
                    "description": "a one-use ticket from POST /feed/ticket, on /feed only"
                },
                "clientBasic": {
                    "type": "http", "scheme": "basic",
                    "description": "client_id and client_secret, form-encoded, as HTTP Basic"
                }
            },
            "parameters": {
                "Id": {
                    "name": "id", "in": "path", "required": true,
                    "schema": { "type": "string", "format": "uuid" }
                },
                "Wait": {
                    "name": "wait", "in": "query", "required": false,
                    "description": "hold the answer until the outcome is known: `5s`, `5` or \
                        `500ms`, at most 30 s; 200 with the outcome, or 202 on timeout",
                    "schema": { "type": "string", "pattern": "^[0-9]{1,9}(s|ms)?$" }
                },
                "Prefer": {
                    "name": "Prefer", "in": "header", "required": false,
                    "description": "RFC 7240 `wait=<seconds>`, same as ?wait=",
                    "schema": { "type": "string" }, "example": "wait=5"
                },
                "IdempotencyKey": {
                    "name": "Idempotency-Key", "in": "header", "required": false,
                    "description": "recommended: a unique value per command (a UUID), 1 to 255 \
                        printable ASCII characters, bare or as a quoted string. A retry with the \
                        same key from the same client within 24 h gets the same ids and the \
                        first answer (status and body, with `Idempotent-Replayed: true`), and \
                        reaches the services as the same command, which they apply once. The \
                        same key with a different request is a 422; while the first request \
                        of a key is still being answered, a retry gets 409. Without a key every \
                        request is a new command.",
                    "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$" },
                    "example": "8e03978e-40d5-43e8-bc93-6894a57f9324"
                },
                "CorrelationId": {
                    "name": "X-Correlation-ID", "in": "header", "required": false,
                    "description": "the correlation id of the flow (1 to 128 visible ASCII \
                        characters); a fresh UUID when absent",
                    "schema": { "type": "string", "maxLength": 128 }
                }
            },
            "headers": {
                "CorrelationId": {
                    "description": "the command's correlation id",
                    "schema": { "type": "string" }
                },
                "IdempotentReplayed": {
                    "description": "`true` when this is the kept answer to an earlier request \
                        with the same Idempotency-Key",
                    "schema": { "const": "true" }
                }
            },
            "responses": {
                "BadRequest": {
                    "description": "malformed JSON, path parameter, query parameter or header",
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "Unauthorized": {
                    "description": "no token, or a malformed, forged or expired one \
                        (WWW-Authenticate: Bearer error=\"invalid_token\")",
                    "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } },
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "Forbidden": {
                    "description": "insufficient_scope: the token lacks the route's scope; \
                        forbidden: the customer or order belongs to another tenant; no_tenant: the \
                        token names no tenant and lacks the admin scope",
                    "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } },
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "NotFound": {
                    "description": "no such resource",
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "PayloadTooLarge": {
                    "description": "the body exceeds 64 KiB",
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "UnsupportedMediaType": {
                    "description": "the body's Content-Type is not the one expected",
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "Unprocessable": {
                    "description": "a field is missing, of the wrong type or out of range, or \
                        text holds control characters (`invalid_field`, `missing_field`; \
                        `field` names it); the body is JSON but not an object (`invalid_body`); \
                        or the Idempotency-Key was already used for a \
                        different request (`idempotency_key_reused`, `field` is \
                        `Idempotency-Key`)",
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "IdempotencyKeyInUse": {
                    "description": "`idempotency_key_in_use`: the first request with this \
                        Idempotency-Key is still being answered; retry after `Retry-After` \
                        seconds with the same key",
                    "headers": { "Retry-After": { "schema": { "type": "integer" } } },
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "KafkaUnavailable": {
                    "description": "nothing was accepted: Kafka did not acknowledge the command \
                        (`kafka_unavailable`), the services are too far behind (`overloaded`), \
                        order-view is unavailable (`upstream_unavailable`), too many requests \
                        are waiting for outcomes (`too_many_waiters`), or the request took too \
                        long (`timeout`); retry after `Retry-After` seconds",
                    "headers": { "Retry-After": { "schema": { "type": "integer" } } },
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "Unavailable": {
                    "description": "a service behind the gateway is unavailable or too slow \
                        (`upstream_unavailable`, `upstream_timeout`), the request took too long \
                        (`timeout`), or the gateway is at a cap (`too_many_streams`, \
                        `too_many_tickets`); retry after `Retry-After` seconds",
                    "headers": { "Retry-After": { "schema": { "type": "integer" } } },
                    "content": { "application/json": { "schema": schema("Error") } }
                },
                "TooManyRequests": {
                    "description": "a rate limit was reached (`rate_limited`), or this client \
                        holds as many live feeds as it may (`too_many_streams`); retry after \
                        `Retry-After` seconds",
                    "headers": { "Retry-After": { "schema": { "type": "integer" } } },
                    "content": { "application/json": { "schema": schema("Error") } }
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "examples": ["invalid_token", "insufficient_scope", "invalid_field",
                                        "missing_field", "invalid_body", "malformed_json", "unsupported_media_type",
                                        "invalid_parameter", "not_found", "method_not_allowed",
                                        "invalid_client", "invalid_request", "invalid_scope",
                                        "unsupported_grant_type", "payload_too_large",
                                        "kafka_unavailable", "overloaded", "upstream_unavailable", "upstream_timeout",
                                        "idempotency_key_reused", "idempotency_key_in_use",
                                        "rate_limited", "too_many_streams", "too_many_waiters",
                                        "too_many_tickets", "invalid_ticket", "timeout"]
                                },
                                "message": { "type": "string" },
                                "field": { "type": "string", "description": "the input to blame, when there is one" }
                            }
                        }
                    }
                },
                "Money": {
                    "description": "an amount with at most 2 decimals, up to 1000000000.00",
                    "oneOf": [
                        { "type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$", "examples": ["60.00"] },
                        { "type": "number", "minimum": 0, "maximum": 1000000000, "multipleOf": 0.01 }
                    ]
                },
                "Fleet": {
                    "type": "object",
                    "required": ["discovery", "instances", "order_view"],
                    "properties": {
                        "discovery": { "type": "boolean", "description": "whether order-view's replicas come from the directory" },
                        "instances": { "type": "array", "items": schema("Instance") },
                        "order_view": { "type": "array", "items": schema("Replica") }
                    }
                },
                "Ops": {
                    "type": "object",
                    "required": ["dead_letters", "freshness", "generated_at_ms", "cache_ms"],
                    "properties": {
                        "dead_letters": {
                            "type": ["array", "null"],
                            "description": "null when Kafka did not answer (see dead_letters_error)",
                            "items": {
                                "type": "object",
                                "required": ["topic", "messages"],
                                "properties": {
                                    "topic": { "type": "string" },
                                    "messages": { "type": "integer", "description": "high minus low watermark, summed over the partitions" }
                                }
                            }
                        },
                        "dead_letters_error": { "type": ["string", "null"] },
                        "freshness": {
                            "type": "object",
                            "required": ["p50_seconds", "p99_seconds", "replicas", "replicas_scraped"],
                            "properties": {
                                "p50_seconds": { "type": ["number", "null"] },
                                "p99_seconds": { "type": ["number", "null"] },
                                "observations": { "type": ["number", "null"] },
                                "replicas": { "type": "integer", "description": "order-view replicas the gateway balances over" },
                                "replicas_scraped": { "type": "integer", "description": "of them, those whose /metrics answered" }
                            }
                        },
                        "generated_at_ms": { "type": "integer" },
                        "cache_ms": { "type": "integer", "description": "how long this answer is served again" }
                    }
                },
                "Instance": {
                    "type": "object",
                    "required": ["service", "instance_id", "version", "url", "started_at_ms",
                        "announced_at_ms", "heartbeat_ms", "ready", "partitions", "up", "last_seen_ms"],
                    "properties": {
                        "service": { "type": "string" },
                        "instance_id": { "type": "string" },
                        "version": { "type": "string" },
                        "url": { "type": "string", "description": "the advertised base URL" },
                        "started_at_ms": { "type": "integer" },
                        "announced_at_ms": { "type": "integer" },
                        "heartbeat_ms": { "type": "integer" },
                        "ready": { "type": "boolean" },
                        "lag": { "type": ["integer", "null"], "description": "messages behind, for consumers" },
                        "partitions": { "type": "array", "items": { "type": "string" } },
                        "up": { "type": "boolean", "description": "false once heartbeats stopped" },
                        "last_seen_ms": { "type": "integer", "description": "how long ago it last announced itself" }
                    }
                },
                "Replica": {
                    "type": "object",
                    "required": ["url", "in_flight", "consecutive_failures"],
                    "properties": {
                        "url": { "type": "string" },
                        "in_flight": { "type": "integer" },
                        "consecutive_failures": { "type": "integer" },
                        "ejected_for_ms": { "type": ["integer", "null"], "description": "set aside for this long after failures in a row" }
                    }
                },
                "FeedTicket": {
                    "type": "object",
                    "required": ["ticket", "expires_in"],
                    "properties": {
                        "ticket": { "type": "string", "description": "pass as GET /feed?ticket=, once" },
                        "expires_in": { "type": "integer", "description": "seconds the ticket stays valid" }
                    }
                },
                "TokenRequest": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": { "const": "client_credentials" },
                        "client_id": { "type": "string" },
                        "client_secret": { "type": "string" },
                        "scope": {
                            "type": "string",
                            "description": "space-separated: orders:write customers:write feed:read"
                        }
                    }
                },
                "TokenResponse": {
                    "type": "object",
                    "required": ["access_token", "token_type", "expires_in", "scope"],
                    "properties": {
                        "access_token": { "type": "string" },
                        "token_type": { "const": "Bearer" },
                        "expires_in": { "type": "integer", "description": "seconds" },
                        "scope": { "type": "string" }
                    }
                },
                "PlaceOrderRequest": {
                    "type": "object",
                    "required": ["customer_id", "total"],
                    "properties": {
                        "customer_id": { "type": "string", "format": "uuid" },
                        "total": { "$ref": "#/components/schemas/Money", "description": "greater than zero" }
                    }
                },
                "CancelOrderRequest": {
                    "type": "object",
                    "properties": {
                        "reason": {
                            "type": ["string", "null"], "maxLength": 200,
                            "description": "no control characters", "pattern": "^\\P{Cc}*$"
                        }
                    }
                },
                "RegisterCustomerRequest": {
                    "type": "object",
                    "required": ["name", "credit_limit"],
                    "properties": {
                        "name": {
                            "type": "string", "minLength": 1, "maxLength": 200,
                            "description": "no control characters", "pattern": "^\\P{Cc}*$"
                        },
                        "credit_limit": schema("Money"),
                        "tenant": {
                            "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                            "description": "the customer's tenant: an admin's choice (none when left \
                                out); a tenant's client registers customers of its own tenant"
                        }
                    }
                },
                "CreditLimitRequest": {
                    "type": "object",
                    "required": ["credit_limit"],
                    "properties": { "credit_limit": schema("Money") }
                },
                "OrderAccepted": {
                    "type": "object",
                    "required": ["order_id", "correlation_id", "status_url", "feed_url"],
                    "properties": {
                        "order_id": { "type": "string", "format": "uuid" },
                        "correlation_id": { "type": "string" },
                        "status_url": { "type": "string", "examples": ["/orders/{id}"] },
                        "feed_url": { "type": "string", "examples": ["/feed?order_id={id}"] }
                    }
                },
                "OrderOutcome": {
                    "allOf": [
                        schema("OrderAccepted"),
                        {
                            "type": "object",
                            "required": ["status", "order"],
                            "properties": {
                                "status": { "enum": ["APPROVED", "REJECTED", "CANCELLED"] },
                                "order": schema("View")
                            }
                        }
                    ]
                },
                "CustomerAccepted": {
                    "type": "object",
                    "required": ["customer_id", "correlation_id", "status_url", "feed_url"],
                    "properties": {
                        "customer_id": { "type": "string", "format": "uuid" },
                        "correlation_id": { "type": "string" },
                        "status_url": { "type": "string", "examples": ["/customers/{id}"] },
                        "feed_url": { "type": "string", "examples": ["/feed?customer_id={id}"] }
                    }
                },
                "CustomerOutcome": {
                    "allOf": [
                        schema("CustomerAccepted"),
                        {
                            "type": "object",
                            "required": ["customer"],
                            "properties": { "customer": schema("View") }
                        }
                    ]
                },
                "View": {
                    "description": "order-view's JSON representation, passed through unchanged",
                    "type": ["object", "array"]
                }
            }
        }
    })
}

/// A health report: every check by name, with the reason of those that failed; 503 when
/// one did.
fn health_responses(ok: &str, not: &str) -> Value {
    let report = |status: &str| {
        json!({ "application/json": { "schema": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": { "const": status },
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok"],
                        "properties": {
                            "ok": { "type": "boolean" },
                            "error": { "type": "string" }
                        }
                    }
                }
            }
        } } })
    };
    json!({
        "200": { "description": "every check passed", "content": report(ok) },
        "503": { "description": "a check failed", "content": report(not) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::route_table;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = &*DOCUMENT;
        let table = route_table();
        for route in &table {
            let method = route.method.as_str().to_ascii_lowercase();
            assert!(
                doc["paths"][route.path][&method].is_object(),
                "{} {} is not in openapi.json",
                route.method,
                route.path
            );
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
                assert!(
                    table
                        .iter()
                        .any(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method)),
                    "openapi.json documents {method} {path}, which the router does not serve"
                );
            }
        }
    }

    /// `POST /auth/token` is left out: issuing another token changes nothing, so it takes
    /// no key.
    #[test]
    fn every_command_documents_its_idempotency_key_and_422() {
        let doc = &*DOCUMENT;
        let mut commands = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !["post", "put"].contains(&method.as_str())
                    || path == "/auth/token"
                    || path == "/feed/ticket"
                {
                    continue;
                }
                commands += 1;
                let parameters = op["parameters"].as_array().unwrap();
                assert!(
                    parameters.contains(&parameter("IdempotencyKey")),
                    "{method} {path}"
                );
                for status in ["409", "422"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
        assert_eq!(commands, 4);
        let key = &doc["components"]["parameters"]["IdempotencyKey"];
        assert_eq!(key["name"], crate::idempotency::HEADER);
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, node: &Value, refs: &mut usize) {
            match node {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("local reference");
                        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
                        *refs += 1;
                    }
                    map.values().for_each(|v| walk(doc, v, refs));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v, refs)),
                _ => {}
            }
        }
        let mut refs = 0;
        walk(&DOCUMENT, &DOCUMENT, &mut refs);
        assert!(refs > 20);
    }

    #[test]
    fn secured_operations_name_known_schemes_and_scopes() {
        let doc = &*DOCUMENT;
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        let scopes = &schemes["oauth2"]["flows"]["clientCredentials"]["scopes"];
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for requirement in op["security"].as_array().into_iter().flatten() {
                    for (scheme, needed) in requirement.as_object().unwrap() {
                        assert!(schemes.contains_key(scheme), "{scheme}");
                        for scope in needed.as_array().unwrap() {
                            assert!(scopes.get(scope.as_str().unwrap()).is_some(), "{scope}");
                        }
                    }
                }
            }
        }
    }
}
