//! The engine suite: every case of the registry's write side and of the store's upkeep
//! (collection, the graph check, corrupt records; `cases.rs`) runs against every store engine, the behaviour a single server over a directory has being the bar:
//!
//! | module | engine |
//! |---|---|
//! | `local` | a directory, one server |
//! | `s3` | S3-compatible object storage (a 3-node Garage cluster) and PostgreSQL, two replicas taking turns request by request |
//! | `azure` | Azure Blob Storage (the Azurite emulator) and PostgreSQL, two replicas likewise |
//!
//! The shared engines need what `.ci/cluster.sh` starts (see `common::cluster`); without it
//! their cases skip (and fail under CI). `full_disk.rs` is a local disk's own case.

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod full_disk;

/// The store engine a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Local,
    S3,
    Azure,
}

/// A test per case and engine: `local::CASE`, `s3::CASE`, `azure::CASE`.
macro_rules! on_every_engine {
    ($($threads:literal $case:ident,)*) => {
        on_every_engine!(@engine local Local $($threads $case,)*);
        on_every_engine!(@engine s3 S3 $($threads $case,)*);
        on_every_engine!(@engine azure Azure $($threads $case,)*);
    };
    (@engine $module:ident $engine:ident $($threads:literal $case:ident,)*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
                async fn $case() {
                    crate::cases::$case(crate::Engine::$engine).await
                }
            )*
        }
    };
}

on_every_engine! {
    2 monolithic_and_chunked_uploads_store_blobs_by_digest,
    2 a_wrong_digest_stores_nothing,
    2 cancelled_and_stale_uploads_leave_no_temp_files,
    2 blobs_are_scoped_and_mounted_only_from_repositories_that_hold_them,
    2 manifests_are_checked_pushed_tagged_and_deleted,
    2 referrers_list_the_manifests_that_name_a_subject,
    2 twenty_clients_pushing_one_blob_all_succeed_and_one_copy_is_stored,
    2 uploads_over_the_size_limit_are_refused,
    2 htpasswd_guards_writes_and_with_auth_reads_reads_too,
    2 an_early_416_reaches_a_client_still_sending_its_chunk,
    2 sha512_blobs_and_manifests_round_trip_through_every_endpoint,
    2 a_push_by_digest_with_tag_parameters_tags_the_manifest,
    2 referrers_of_a_repository_that_does_not_exist_are_an_empty_index,
    2 the_catalog_and_tag_lists_agree_as_a_repository_empties,
    4 pushes_racing_deletes_never_leave_a_tag_on_an_unlinked_manifest,
    2 manifests_are_judged_by_their_shape_and_served_as_pushed,
    2 upload_sessions_are_capped_in_all_and_per_client,
    2 a_trickling_upload_expires_with_its_request,
    2 the_collector_removes_what_nothing_reaches_and_keeps_every_tagged_image,
    2 the_collector_evicts_a_mirrors_unpulled_images,
    2 verify_finds_dangling_records_and_repair_removes_only_them,
    2 a_corrupt_tag_record_is_a_500_and_every_other_tag_still_serves,
    2 catalog_and_tag_pages_list_every_name_once_in_byte_order,
}
