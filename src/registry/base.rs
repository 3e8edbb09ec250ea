//! `GET /v2/`: tells clients this is a registry speaking the v2 API (no auth required).

use bytes::Bytes;
use hyper::{Response, StatusCode};

use super::body::Body;

pub fn get() -> Response<Body> {
    super::document(
        StatusCode::OK,
        "application/json",
        Bytes::from_static(b"{}"),
    )
}
