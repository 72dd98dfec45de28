//! Feed tickets: how a browser opens the live feed without putting its access token in a
//! URL (where it would land in history, logs and `Referer` headers for its whole life).
//!
//! `POST /feed/ticket` (bearer token with `feed:read`) answers `{ticket, expires_in}`;
//! `GET /feed?ticket=...` accepts the ticket once, within its lifetime, and the stream
//! carries the rights of the token it was issued for. `?access_token=` is refused.
//!
//! Tickets live in this replica's memory: behind several replicas, the ticket must go to
//! the replica that issued it (sticky sessions), or the browser asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::app::AppState;
use crate::auth::{Authorized, FeedRead};
use crate::error::ApiError;
use crate::jwt::Claims;

#[derive(Debug)]
pub struct Tickets {
    ttl: Duration,
    max: usize,
    issued: Mutex<HashMap<String, (Claims, Instant)>>,
}

impl Tickets {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Tickets {
            ttl,
            max,
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// A new ticket for `claims`; `None` when `max` unexpired tickets are outstanding.
    fn issue(&self, claims: Claims, now: Instant) -> Option<String> {
        let mut issued = self.issued.lock().expect("tickets lock");
        if issued.len() >= self.max {
            issued.retain(|_, (_, expires)| *expires > now);
            if issued.len() >= self.max {
                return None;
            }
        }
        // Two random UUIDs: 244 random bits, from the operating system's generator.
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        issued.insert(ticket.clone(), (claims, now + self.ttl));
        Some(ticket)
    }

    /// The claims of `ticket`, once: it is gone after this call, valid or not.
    fn redeem(&self, ticket: &str, now: Instant) -> Option<Claims> {
        let (claims, expires) = self.issued.lock().expect("tickets lock").remove(ticket)?;
        (expires > now).then_some(claims)
    }
}

#[derive(Debug, Serialize)]
struct TicketResponse {
    ticket: String,
    expires_in: u64,
}

/// `POST /feed/ticket`.
pub async fn issue(
    State(app): State<Arc<AppState>>,
    auth: Authorized<FeedRead>,
) -> Result<Response, ApiError> {
    let ticket = app
        .tickets
        .issue(auth.claims, Instant::now())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_tickets",
                "too many feed tickets are outstanding; retry later",
            )
            .header(header::RETRY_AFTER, "5")
        })?;
    let mut response = axum::Json(TicketResponse {
        ticket,
        expires_in: app.tickets.ttl.as_secs(),
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Who opens a live feed: the bearer token of the `Authorization` header, or a ticket in
/// the query string. A token in the query string is refused, naming the parameter.
#[derive(Debug)]
pub struct FeedAccess {
    pub claims: Claims,
}

impl FromRequestParts<Arc<AppState>> for FeedAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).map_err(|e| {
                ApiError::invalid_parameter("query", format!("malformed query: {e}"))
            })?;
        if pairs.iter().any(|(name, _)| name == "access_token") {
            return Err(ApiError::invalid_parameter(
                "access_token",
                "access tokens are not accepted in the URL; send Authorization: Bearer, or get a one-use ticket from POST /feed/ticket and pass ?ticket=",
            ));
        }
        let Some((_, ticket)) = pairs.into_iter().find(|(name, _)| name == "ticket") else {
            let auth = Authorized::<FeedRead>::from_request_parts(parts, state).await?;
            return Ok(FeedAccess {
                claims: auth.claims,
            });
        };
        let claims = state
            .tickets
            .redeem(&ticket, Instant::now())
            .ok_or_else(|| {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&["invalid_ticket"])
                    .inc();
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_ticket",
                    "the ticket is unknown, used or expired; get a new one from POST /feed/ticket",
                )
                .field("ticket")
            })?;
        crate::limits::admit_api_client(state, &claims.sub)?;
        Ok(FeedAccess { claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        serde_json::from_value(serde_json::json!({
            "sub": "demo", "iat": 0, "exp": i64::MAX, "scope": "feed:read", "jti": ""
        }))
        .expect("claims")
    }

    #[test]
    fn a_ticket_works_once_and_only_in_time() {
        let tickets = Tickets::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        let once = tickets.issue(claims(), now).unwrap();
        assert_eq!(once.len(), 64);
        assert_eq!(tickets.redeem(&once, now).unwrap().sub, "demo");
        assert!(tickets.redeem(&once, now).is_none());
        let late = tickets.issue(claims(), now).unwrap();
        assert!(
            tickets
                .redeem(&late, now + Duration::from_secs(60))
                .is_none()
        );
        assert!(tickets.redeem("nope", now).is_none());
    }

    #[test]
    fn outstanding_tickets_are_bounded() {
        let tickets = Tickets::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        tickets.issue(claims(), now).unwrap();
        tickets.issue(claims(), now).unwrap();
        assert!(tickets.issue(claims(), now).is_none());
        // Expired ones make room.
        assert!(
            tickets
                .issue(claims(), now + Duration::from_secs(61))
                .is_some()
        );
    }
}
