//! Maps a request path onto a resource. Repository names contain slashes, so paths are read
//! from the right end: `/v2/<name>/manifests/<reference>`, `/v2/<name>/blobs/<digest>`,
//! `/v2/<name>/tags/list`. Every piece is validated here (name grammar, tag grammar, digest
//! syntax) before any handler sees it, so no raw path text ever reaches the store.

use serde_json::json;

use super::errors::{Code, RegistryError};
use crate::digest::Digest;
use crate::reference::{Name, Tag};

/// A request path, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags(Name),
    /// `/v2/<name>/manifests/<tag or digest>`.
    Manifest(Name, Reference),
    /// `/v2/<name>/blobs/<digest>`.
    Blob(Name, Digest),
    /// `/v2/<name>/blobs/uploads/` (`None`: start an upload) or `.../uploads/<id>`.
    Upload(Name, Option<UploadId>),
    /// `/v2/<name>/referrers/<digest>`.
    Referrers(Name, Digest),
}

impl Route {
    /// The same resource in repository `name` (a mirror's name for an unprefixed one).
    pub fn renamed(self, name: Name) -> Route {
        match self {
            Route::Base | Route::Catalog => self,
            Route::Tags(_) => Route::Tags(name),
            Route::Manifest(_, r) => Route::Manifest(name, r),
            Route::Blob(_, d) => Route::Blob(name, d),
            Route::Upload(_, id) => Route::Upload(name, id),
            Route::Referrers(_, d) => Route::Referrers(name, d),
        }
    }

    /// The repository the path names, if any.
    pub fn name(&self) -> Option<&Name> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }
}

/// An upload session's id: 32 lowercase hex digits (128 random bits), so that a session cannot
/// be guessed, and safe anywhere (it never reaches a path: sessions live in memory).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(s: &str) -> Option<UploadId> {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| UploadId(s.to_owned()))
    }
}

/// What a manifest request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

pub fn route(path: &str) -> Result<Route, RegistryError> {
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => return Ok(Route::Base),
        Some(rest) => rest
            .strip_prefix('/')
            .ok_or_else(|| unknown_endpoint(path))?,
        None => return Err(unknown_endpoint(path)),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name = |count: usize| -> Result<Name, RegistryError> {
        let name = segments[..count].join("/");
        name.parse::<Name>().map_err(|e| {
            RegistryError::new(Code::NameInvalid, truncate(&e.to_string()))
                .detail(json!({ "name": truncate(&name) }))
        })
    };
    match segments.as_slice() {
        [.., "blobs", "uploads"] if n >= 3 => Ok(Route::Upload(name(n - 2)?, None)),
        [.., "blobs", "uploads", ""] if n >= 4 => Ok(Route::Upload(name(n - 3)?, None)),
        [.., "blobs", "uploads", id] if n >= 4 => {
            let name = name(n - 3)?;
            let id = UploadId::parse(id).ok_or_else(|| {
                RegistryError::new(Code::BlobUploadUnknown, "blob upload unknown to registry")
                    .detail(json!({ "session": truncate(id) }))
            })?;
            Ok(Route::Upload(name, Some(id)))
        }
        [.., "referrers", digest] if n >= 3 => {
            let name = name(n - 2)?;
            Ok(Route::Referrers(name, parse_digest(digest)?))
        }
        [.., "tags", "list"] if n >= 3 => Ok(Route::Tags(name(n - 2)?)),
        [.., "manifests", reference] if n >= 3 => {
            let name = name(n - 2)?;
            Ok(Route::Manifest(name, parse_reference(reference)?))
        }
        [.., "blobs", digest] if n >= 3 => {
            let name = name(n - 2)?;
            Ok(Route::Blob(name, parse_digest(digest)?))
        }
        _ => Err(unknown_endpoint(path)),
    }
}

fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    if s.contains(':') {
        return parse_digest(s).map(Reference::Digest);
    }
    // A tag that breaks the grammar cannot exist, so the manifest is unknown.
    s.parse::<Tag>().map(Reference::Tag).map_err(|e| {
        RegistryError::new(Code::ManifestUnknown, truncate(&e.to_string()))
            .detail(json!({ "reference": truncate(s) }))
    })
}

pub(super) fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse::<Digest>().map_err(|e| {
        RegistryError::new(Code::DigestInvalid, truncate(&e.to_string()))
            .detail(json!({ "digest": truncate(s) }))
    })
}

fn unknown_endpoint(path: &str) -> RegistryError {
    RegistryError::new(Code::Unsupported, "no such endpoint in the registry API")
        .status(hyper::StatusCode::NOT_FOUND)
        .detail(json!({ "path": truncate(path) }))
}

/// Request text echoed in an error (or a message quoting it) is cut short: an 8 KiB path
/// need not come back whole.
pub fn truncate(s: &str) -> String {
    const MAX: usize = 256;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> Route {
        route(path).unwrap_or_else(|e| panic!("{path}: {e:?}"))
    }

    fn code(path: &str) -> Code {
        match route(path) {
            Ok(r) => panic!("{path} routed to {r:?}"),
            Err(e) => e.code,
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn names_with_slashes_are_read_from_the_right() {
        let n = |s: &str| s.parse::<Name>().expect("name");
        assert_eq!(ok("/v2/"), Route::Base);
        assert_eq!(ok("/v2"), Route::Base);
        assert_eq!(ok("/v2/_catalog"), Route::Catalog);
        assert_eq!(ok("/v2/a/b/c/tags/list"), Route::Tags(n("a/b/c")));
        assert_eq!(
            ok("/v2/x/manifests/latest"),
            Route::Manifest(n("x"), Reference::Tag("latest".parse().expect("tag")))
        );
        // A repository may itself be called "manifests", "blobs" or "tags".
        assert_eq!(
            ok("/v2/manifests/tags/manifests/v1"),
            Route::Manifest(
                n("manifests/tags"),
                Reference::Tag("v1".parse().expect("tag"))
            )
        );
        assert_eq!(
            ok(&format!("/v2/blobs/blobs/{D}")),
            Route::Blob(n("blobs"), D.parse().expect("digest"))
        );
        assert_eq!(ok("/v2/a/blobs/uploads/"), Route::Upload(n("a"), None));
        assert_eq!(ok("/v2/a/blobs/uploads"), Route::Upload(n("a"), None));
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            ok(&format!("/v2/a/b/blobs/uploads/{id}")),
            Route::Upload(n("a/b"), UploadId::parse(id))
        );
        assert_eq!(
            ok(&format!("/v2/a/referrers/{D}")),
            Route::Referrers(n("a"), D.parse().expect("digest"))
        );
    }

    #[test]
    fn bad_paths_get_the_right_codes() {
        assert_eq!(code("/v2/a/../b/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/A/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2//a/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/a%2Fb/manifests/latest"), Code::NameInvalid);
        assert_eq!(
            code(&format!("/v2/{}/manifests/latest", "a".repeat(300))),
            Code::NameInvalid
        );
        assert_eq!(code("/v2/a/blobs/sha256:abc"), Code::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/md5:abc"), Code::DigestInvalid);
        assert_eq!(
            code("/v2/a/manifests/sha256:..%2F..%2Fx"),
            Code::DigestInvalid
        );
        assert_eq!(code("/v2/a/manifests/sha256:../../x"), Code::Unsupported);
        assert_eq!(code("/v2/a/manifests/.hidden"), Code::ManifestUnknown);
        assert_eq!(code("/v2/a/manifests/"), Code::ManifestUnknown);
        assert_eq!(code("/v2/a/blobs/uploads/1234"), Code::BlobUploadUnknown);
        assert_eq!(
            code("/v2/a/blobs/uploads/0123456789ABCDEF0123456789ABCDEF"),
            Code::BlobUploadUnknown
        );
        // The ids the store's sessions draw are ids the router takes.
        let fresh = crate::store::sessions::new_id().expect("random id");
        assert_eq!(
            UploadId::parse(&fresh).map(|i| i.as_str().to_owned()),
            Some(fresh.clone())
        );
        assert_ne!(crate::store::sessions::new_id().expect("random id"), fresh);
        assert_eq!(code("/v2/a/referrers/latest"), Code::DigestInvalid);
        for unknown in [
            "/",
            "/v1/",
            "/v2x",
            "/v2/a",
            "/v2/manifests/latest",
            "/v2/a/other/x",
        ] {
            assert_eq!(code(unknown), Code::Unsupported, "{unknown}");
        }
    }

    #[test]
    fn echoed_text_is_cut_short() {
        assert_eq!(truncate("abc"), "abc");
        assert_eq!(truncate(&"é".repeat(300)).chars().count(), 259);
    }
}
