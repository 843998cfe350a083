//! The operator REST API ([`dstack_proto::supervisor`]): routes, request
//! parsing ([`request`]), auth for TCP ([`auth`]) and listeners ([`server`]).
//! Everything here is HTTP; the work is done by a [`RequestHandler`].

pub mod auth;
mod command;
pub mod request;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
pub use command::{BlobBytes, Command, Reply, RequestHandler};
use dstack_proto::ApiError;
use dstack_proto::blob::{BLOBS_PATH, MAX_BLOB_BYTES};
use dstack_proto::supervisor::LogChannel;

use crate::error::VmmError;

/// Largest request body: an app-compose.json may be large (upstream allows
/// tens of MiB for the shared files); 16 MiB covers any real one.
pub const MAX_BODY: usize = 16 << 20;

/// The REST API routes over `handler`.
pub fn router<H: RequestHandler>(handler: Arc<H>) -> Router {
    Router::new()
        .route("/v1/version", get(version::<H>))
        // A packed build context is larger than any JSON body.
        .route(
            &format!("{BLOBS_PATH}{{sha256}}"),
            put(put_blob::<H>).layer(axum::extract::DefaultBodyLimit::max(
                usize::try_from(MAX_BLOB_BYTES).unwrap_or(usize::MAX),
            )),
        )
        .route("/v1/vms", post(deploy::<H>).get(list::<H>))
        .route("/v1/vms/{vm}", get(get_vm::<H>).delete(remove::<H>))
        .route("/v1/vms/{vm}/start", post(start::<H>))
        .route("/v1/vms/{vm}/stop", post(stop::<H>))
        .route("/v1/vms/{vm}/logs", get(logs::<H>))
        .route("/v1/images", get(images::<H>))
        .route("/v1/env-key", post(env_key::<H>))
        .route("/v1/kms-meta", post(kms_meta::<H>))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API path") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(handler)
}

async fn run<H: RequestHandler>(handler: &H, command: Result<Command, VmmError>) -> Response {
    let command = match command {
        Ok(command) => command,
        Err(e) => return failure(&e),
    };
    match handler.handle(command).await {
        Ok(reply) => respond(reply),
        Err(e) => failure(&e),
    }
}

fn respond(reply: Reply) -> Response {
    match reply {
        Reply::Version(v) => axum::Json(v).into_response(),
        Reply::Created(vm) => (StatusCode::CREATED, axum::Json(vm)).into_response(),
        Reply::Vm(vm) => axum::Json(vm).into_response(),
        Reply::Vms(vms) => axum::Json(vms).into_response(),
        Reply::Images(images) => axum::Json(images).into_response(),
        Reply::EnvKey(key) => axum::Json(key).into_response(),
        Reply::KmsMeta(meta) => axum::Json(meta).into_response(),
        Reply::Removed | Reply::BlobStored => StatusCode::NO_CONTENT.into_response(),
        Reply::Logs { channel, body } => {
            let content_type = match channel {
                LogChannel::App => "application/x-ndjson",
                LogChannel::Serial => "text/plain; charset=utf-8",
            };
            (
                [(header::CONTENT_TYPE, content_type)],
                Body::from_stream(body),
            )
                .into_response()
        }
    }
}

fn failure(err: &VmmError) -> Response {
    let status = err.status_code();
    if status.is_server_error() {
        tracing::error!("{}", err.to_api_error().error);
    }
    (status, axum::Json(err.to_api_error())).into_response()
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(ApiError::new(text))).into_response()
}

async fn version<H: RequestHandler>(State(h): State<Arc<H>>) -> Response {
    run(&*h, Ok(Command::Version)).await
}

async fn deploy<H: RequestHandler>(
    State(h): State<Arc<H>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match body {
        Ok(body) => run(&*h, request::vms::deploy(&body)).await,
        // Too large or unreadable: answered with the rejection's status, as JSON.
        Err(e) => error(e.status(), &e.body_text()),
    }
}

async fn put_blob<H: RequestHandler>(
    State(h): State<Arc<H>>,
    Path(sha256): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match body {
        Ok(bytes) => {
            let command = Command::PutBlob {
                sha256,
                bytes: BlobBytes(bytes),
            };
            run(&*h, Ok(command)).await
        }
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => error(
            e.status(),
            &format!(
                "blob: over the {} MiB a build context may have",
                MAX_BLOB_BYTES >> 20
            ),
        ),
        Err(e) => error(e.status(), &e.body_text()),
    }
}

async fn list<H: RequestHandler>(State(h): State<Arc<H>>) -> Response {
    run(&*h, Ok(Command::List)).await
}

async fn get_vm<H: RequestHandler>(State(h): State<Arc<H>>, Path(vm): Path<String>) -> Response {
    run(&*h, Ok(Command::Get(vm))).await
}

async fn start<H: RequestHandler>(
    State(h): State<Arc<H>>,
    Path(vm): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let command = query_params(query).and_then(|p| request::vms::start(vm, &p));
    run(&*h, command).await
}

async fn stop<H: RequestHandler>(
    State(h): State<Arc<H>>,
    Path(vm): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let force = query_params(query).and_then(|p| request::vms::force(&p));
    run(&*h, force.map(|force| Command::Stop { vm, force })).await
}

async fn remove<H: RequestHandler>(
    State(h): State<Arc<H>>,
    Path(vm): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let force = query_params(query).and_then(|p| request::vms::force(&p));
    run(&*h, force.map(|force| Command::Remove { vm, force })).await
}

async fn logs<H: RequestHandler>(
    State(h): State<Arc<H>>,
    Path(vm): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let command = query_params(query).and_then(|params| request::logs::logs(vm, &params));
    run(&*h, command).await
}

fn query_params(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, VmmError> {
    query
        .map(|Query(params)| params)
        .map_err(|e| VmmError::invalid("query", e.body_text()))
}

async fn images<H: RequestHandler>(State(h): State<Arc<H>>) -> Response {
    run(&*h, Ok(Command::Images)).await
}

async fn env_key<H: RequestHandler>(
    State(h): State<Arc<H>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match body {
        Ok(body) => run(&*h, request::kms::env_key(&body)).await,
        Err(e) => error(e.status(), &e.body_text()),
    }
}

async fn kms_meta<H: RequestHandler>(
    State(h): State<Arc<H>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match body {
        Ok(body) => run(&*h, request::kms::meta(&body)).await,
        Err(e) => error(e.status(), &e.body_text()),
    }
}

#[cfg(test)]
mod tests;
