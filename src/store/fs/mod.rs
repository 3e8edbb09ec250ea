//! The directory engine: a store that is a folder on this machine (the default). Its blobs,
//! tags and links are files (`store/blobs/`, `store/repositories.rs`, `store/gate.rs`,
//! `store/gc.rs` still hold most of it, beside the shared engine's branches); what is only
//! this engine's lives here.
//!
//! | file | owns |
//! |---|---|
//! | `sessions.rs` | upload sessions in this process: a locked temp file each, hashed as bytes arrive |

pub(crate) mod sessions;
