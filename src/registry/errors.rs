//! OCI distribution error bodies: `{"errors":[{"code","message","detail"}]}` with the status the
//! spec gives each code. Every failed request is answered with one of these, never an empty body.

use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::store::StoreError;

/// The spec's error codes we answer with (plus `RANGE_INVALID` and `UNKNOWN`, which the spec
/// leaves to the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    PaginationNumberInvalid,
    /// Also sent with 413 for an upload or manifest over the size limit.
    SizeInvalid,
    /// A `?tag=` on a manifest push that breaks the tag grammar.
    TagInvalid,
    /// 429: a client over a limit (open uploads, failed logins); `Retry-After` says when.
    TooManyRequests,
    Unauthorized,
    Unsupported,
    /// A `Range` header we cannot satisfy (416); the spec has no code for reads.
    RangeInvalid,
    /// A fault on our side (500); the details go to the log, not to the client.
    Unknown,
    /// 503: a service the store depends on (object storage, the metadata database) cannot
    /// be reached; distribution's code for it.
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::Denied => "DENIED",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Unsupported => "UNSUPPORTED",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unknown => "UNKNOWN",
            Code::Unavailable => "UNAVAILABLE",
        }
    }

    /// The status the spec pairs with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::BlobUploadInvalid
            | Code::DigestInvalid
            | Code::ManifestBlobUnknown
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::PaginationNumberInvalid
            | Code::SizeInvalid
            | Code::TagInvalid => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A failed request: what the client is told, and any header the status calls for.
#[derive(Debug)]
pub struct RegistryError {
    pub code: Code,
    /// Status sent; the code's own unless overridden (an unknown endpoint is a 404 UNSUPPORTED).
    pub status: StatusCode,
    pub message: String,
    pub detail: Value,
    /// `Allow` for 405, `Content-Range` for 416, `WWW-Authenticate` for 401...
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RegistryError {
    pub fn new(code: Code, message: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            status: code.status(),
            message: message.into(),
            detail: Value::Null,
            headers: Vec::new(),
        }
    }

    /// NAME_UNKNOWN for a repository the store does not have.
    pub fn name_unknown(name: &crate::reference::Name) -> RegistryError {
        RegistryError::new(Code::NameUnknown, "repository name not known to registry")
            .detail(json!({ "name": name.as_str() }))
    }

    pub fn detail(mut self, detail: Value) -> RegistryError {
        self.detail = detail;
        self
    }

    pub fn status(mut self, status: StatusCode) -> RegistryError {
        self.status = status;
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> RegistryError {
        self.headers.push((name, value));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if !self.detail.is_null() {
            error["detail"] = self.detail.clone();
        }
        // Serializing a Value cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_vec(&json!({ "errors": [error] }))
            .unwrap_or_else(|_| br#"{"errors":[{"code":"UNKNOWN","message":"error"}]}"#.to_vec())
    }
}

/// A store fault is the server's problem: log it whole, tell the client little (paths of the
/// server's disk are not theirs to see).
impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BlobUnknown(d) => {
                RegistryError::new(Code::BlobUnknown, "blob unknown to registry")
                    .detail(json!({ "digest": d.to_string() }))
            }
            e if e.unavailable() => {
                tracing::error!(error = %e, "a service the store depends on failed");
                RegistryError::new(
                    Code::Unavailable,
                    "the registry's storage cannot be reached; retry shortly",
                )
            }
            StoreError::Io { source, .. } if crate::store::disk_full(&source) => {
                tracing::error!(error = %source, "the store's disk is full");
                storage_full()
            }
            other => {
                tracing::error!(error = %other, "store failure while serving a request");
                RegistryError::new(
                    Code::Unknown,
                    "internal error in the registry's store; see the server log",
                )
            }
        }
    }
}

/// 507 Insufficient Storage: what a write onto a full disk gets (the spec has no code for
/// it; `UNKNOWN` with a message that says what happened).
pub fn storage_full() -> RegistryError {
    RegistryError::new(
        Code::Unknown,
        "the registry's disk is full: nothing was stored; retry when space is freed",
    )
    .status(StatusCode::INSUFFICIENT_STORAGE)
}

/// An on-demand image that cannot be packed. Every request that waited for the pack gets
/// this same answer. Faults of the inputs (a missing library, an unreadable file) are told to
/// the client, who asked for that image; faults of the server's store are only logged.
impl From<&crate::ondemand::ResolveError> for RegistryError {
    fn from(e: &crate::ondemand::ResolveError) -> Self {
        use crate::ondemand::ResolveError;
        match e {
            ResolveError::UnknownPackage { .. } => {
                return RegistryError::new(Code::NameUnknown, e.to_string());
            }
            ResolveError::TooManyPackages { .. } => {
                return RegistryError::new(Code::NameInvalid, e.to_string());
            }
            _ => {}
        }
        if e.disk_full() {
            tracing::error!(error = %e, "on-demand image failed: the disk is full");
            return storage_full();
        }
        if e.is_internal() {
            tracing::error!(error = %e, "on-demand image failed");
            RegistryError::new(
                Code::Unknown,
                "internal error packing the image; see the server log",
            )
        } else {
            RegistryError::new(Code::ManifestUnknown, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_spec_shape() {
        let e =
            RegistryError::new(Code::ManifestUnknown, "no such tag").detail(json!({"tag": "v9"}));
        let v: Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(
            v,
            json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such tag","detail":{"tag":"v9"}}]})
        );
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }
}
