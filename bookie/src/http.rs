//! The bookie's HTTP endpoints, with BookKeeper's paths so that probes and operators' scripts
//! carry over: `GET /api/v1/bookie/state` (BookKeeper's state JSON) and
//! `GET /api/v1/bookie/is_ready` (200 when registered and writable, 503 otherwise — what a
//! Kubernetes readiness probe asks) and `GET /metrics` (Prometheus, see [`crate::metrics`], with
//! the process's CPU and memory). Served on `bookie.http_port` when it is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::api::BookieState;
use crate::server::Bookie;

/// What the endpoints report on: the storage and whether its registration is in place.
#[derive(Clone, Debug)]
pub struct Health {
    bookie: Arc<Bookie>,
    registered: Arc<AtomicBool>,
}

/// BookKeeper's `GET /api/v1/bookie/state` body.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    pub running: bool,
    pub read_only: bool,
    pub shutting_down: bool,
    pub available_for_high_priority_writes: bool,
}

impl Health {
    pub(crate) fn new(bookie: Arc<Bookie>, registered: Arc<AtomicBool>) -> Self {
        Health { bookie, registered }
    }

    pub fn state(&self) -> StateView {
        let shutting_down = self.bookie.is_shutting_down();
        let read_only = self.bookie.state() == BookieState::ReadOnly;
        StateView {
            running: !shutting_down,
            read_only,
            shutting_down,
            // Recovery writes of a read-only bookie are refused too.
            available_for_high_priority_writes: !shutting_down && !read_only,
        }
    }

    /// Registered (brokers can find it) and writable (placement may choose it).
    pub fn is_ready(&self) -> bool {
        let s = self.state();
        s.running && !s.read_only && self.registered.load(Ordering::Acquire)
    }
}

/// The routes, on `health`.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/api/v1/bookie/state", get(state))
        .route("/api/v1/bookie/is_ready", get(is_ready))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn state(State(h): State<Health>) -> Response {
    axum::Json(h.state()).into_response()
}

async fn metrics(State(h): State<Health>) -> Response {
    let mut families = h.bookie.metric_families();
    families.extend(crate::metrics::process_families());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::TEXT_CONTENT_TYPE,
        )],
        crate::metrics::encode(&families),
    )
        .into_response()
}

async fn is_ready(State(h): State<Health>) -> Response {
    if h.is_ready() {
        (StatusCode::OK, "OK").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Serves `router` on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}
