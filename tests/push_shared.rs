//! The cases of `tests/push.rs` (the registry's write side, as the OCI distribution spec
//! sets it out: uploads whole, chunked and mounted, manifest pushes and deletes, referrers,
//! scoping, limits and authentication) against two replicas over one shared store (S3 +
//! PostgreSQL, see `common::cluster`), every request going to the other replica than the
//! one before: the behaviour must be the single server's.

mod common;

/// Over a shared store, two replicas taking turns.
const SHARED: bool = true;

include!("push/cases.rs");
