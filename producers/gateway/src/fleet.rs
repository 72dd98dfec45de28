//! `GET /fleet`: every instance of every service as the platform's Directory knows them,
//! and the gateway's side of the balancing over order-view's replicas. For admins only:
//! it names internal addresses.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use crate::app::AppState;
use crate::auth::{Admin, Authorized};

pub async fn fleet(
    State(app): State<Arc<AppState>>,
    _admin: Authorized<Admin>,
) -> impl IntoResponse {
    let body = json!({
        "discovery": app.source.is_discovery(),
        "instances": app.source.instances(),
        "order_view": app.order_view.upstream().replicas(),
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body))
}
