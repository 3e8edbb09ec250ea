//! quinistry: pack files into OCI/Docker images with a streaming pipeline, and keep them in a
//! content-addressed store: a directory, or object storage with PostgreSQL shared by
//! replicas.
//!
//! Data flows one way: the CLI (`main.rs`) hands inputs to [`pack`], which streams them
//! through tar, hashing and compression into the [`store`]; [`image`] turns the result into a
//! config and manifests, which are stored as blobs too. [`registry`] serves the store over the
//! OCI distribution API and only reads it. [`runtime`] tells `pack` which interpreter and
//! libraries a dynamic executable needs, so every image it makes can run.
//!
//! Images can also be packed on request: for `serve --root`/`--image`, the registry asks
//! [`ondemand`] for a tag's manifest, which packs through `pack` (once per image however many
//! clients ask) and its layer cache (an unchanged input is not packed again, even after a
//! restart).
//!
//! | module | owns |
//! |---|---|
//! | [`digest`] | the `Digest` type, parsing, the hashing writer; no disk access |
//! | [`reference`](mod@reference) | repository-name and tag grammar; what makes a name safe as a path |
//! | [`store`] | every path and key of the store, temp files, atomic commit, tags, links, verify, gc; the shared store's object storage and database |
//! | [`pack`] | the pipeline and tar determinism; `compress` and `gzip` (the layer's compression), `cache` (the layer cache), `layout` (OCI layout export), `progress` |
//! | [`runtime`] | what an image needs to run: `elf`, a dynamic ELF executable's interpreter and libraries, found as ld.so finds them; `dpkg` and `packages`, the package database; `base`, the accounts and files no package ships |
//! | [`ondemand`] | `--image`, `--root` and `pkgs/` images: the root scan, its confinement, resolution per request; `flight` (concurrent callers share one pack); `prepack` |
//! | [`image`] | config and manifest JSON (canonical bytes); no I/O |
//! | [`registry`] | the HTTP API: router, one file per resource, OCI errors, TLS, access rules, health |
//! | [`metrics`] | Prometheus metrics, off unless `serve --metrics-listen` |
//! | [`licenses`] | the license notices of the linked crates, generated at build time |
//! | [`thread`] | our own threads' priority (compression workers, the collector) |

pub mod digest;
pub mod image;
pub mod licenses;
pub mod metrics;
pub mod mirror;
pub mod ondemand;
pub mod pack;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod thread;
