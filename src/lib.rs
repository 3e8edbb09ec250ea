//! quinistry: pack files into OCI/Docker images with a streaming pipeline, and keep them in a
//! content-addressed store on disk.
//!
//! Data flows one way: the CLI (`main.rs`) hands inputs to [`pack`], which streams them
//! through tar, hashing and [`compress`]ion into the [`store`]; [`image`] turns the result into a config
//! and manifests, which are stored as blobs too. [`registry`] serves the store over the OCI
//! distribution API and only reads it. [`runtime`] tells `pack` which interpreter and
//! libraries a dynamic executable needs, so every image it makes can run.
//!
//! Images can also be packed on request: for `serve --root`/`--image`, the registry asks
//! [`ondemand`] for a tag's manifest, which packs through `pack` (once per image however many
//! clients ask, [`flight`]) and the layer [`cache`] (an unchanged input is not packed again,
//! even after a restart). [`progress`] shows a long pack moving.
//!
//! | module | owns |
//! |---|---|
//! | [`digest`] | the `Digest` type, parsing, the hashing writer; no disk access |
//! | [`reference`](mod@reference) | repository-name and tag grammar; what makes a name safe as a path |
//! | [`store`] | every on-disk path of the store, temp files, atomic commit, tags, verify |
//! | [`pack`] | the pipeline and tar determinism |
//! | [`compress`] | the layer's compression (gzip, zstd, none): its settings and running it |
//! | [`gzip`] | parallel gzip whose bytes do not depend on the number of threads |
//! | [`cache`] | the layer cache: which layer a set of input files packed into, checked against the store |
//! | [`ondemand`] | `--image` and `--root` images: the root scan, its confinement, resolution per request |
//! | [`flight`] | single flight: concurrent callers share one run of the work, failure included |
//! | [`progress`] | a progress bar on a terminal, else periodic log lines |
//! | [`runtime`] | what an image needs to run: a dynamic ELF executable's interpreter and libraries, found as ld.so finds them (`runtime::elf`) |
//! | [`image`] | config and manifest JSON (canonical bytes); no I/O |
//! | [`registry`] | the HTTP API: router, one file per resource, OCI errors |
//! | [`layout`] | exporting an image from the store as an OCI image layout directory |
//! | [`licenses`] | the license notices of the linked crates, generated at build time |

pub mod cache;
pub mod compress;
pub mod digest;
pub mod flight;
pub mod gzip;
pub mod image;
pub mod layout;
pub mod licenses;
pub mod ondemand;
pub mod pack;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod store;
