//! The metadata of a store shared by several replicas, in PostgreSQL (`--metadata
//! postgres://…`): which blobs exist, tags, repository links, referrer records, manifest media
//! types and layer-cache records. The bytes are in object storage (`s3`).
//!
//! Every answer comes from the database, so what one replica writes the next request to any
//! replica sees: there is no cache of mutable state in a replica. Writes that must not
//! interleave across replicas (a manifest push with its tags against a delete) take the
//! repository's advisory lock ([`Metadata::lock_repository`]), the shared form of the
//! in-process lock a single server holds.
//!
//! The schema is versioned: [`MIGRATIONS`] run at start, each in its own transaction, under
//! an advisory lock so that replicas starting together do not race; a database whose schema
//! is newer than this binary knows is refused.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub(crate) mod gc;
pub(crate) mod sessions;

use super::sessions::Refused;
use super::{Link, StoreError};
use crate::digest::Digest;
use crate::reference::{Name, Tag};

/// The schema, one entry per version, applied in order. Never edit one that shipped: add
/// the next.
const MIGRATIONS: &[&str] = &[
    // 1: blobs, tags, links, referrers, media types, layer-cache records.
    "CREATE TABLE blobs (
         digest text PRIMARY KEY,
         size bigint NOT NULL,
         touched_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE tags (
         repository text NOT NULL,
         tag text NOT NULL,
         digest text NOT NULL,
         set_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (repository, tag)
     );
     CREATE TABLE links (
         repository text NOT NULL,
         kind text NOT NULL,
         digest text NOT NULL,
         touched_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (repository, kind, digest)
     );
     CREATE INDEX links_by_digest ON links (digest);
     CREATE TABLE referrers (
         repository text NOT NULL,
         subject text NOT NULL,
         referrer text NOT NULL,
         PRIMARY KEY (repository, subject, referrer)
     );
     CREATE TABLE manifest_types (
         digest text PRIMARY KEY,
         media_type text NOT NULL
     );
     CREATE TABLE layer_records (
         key text PRIMARY KEY,
         record bytea NOT NULL
     );",
    // 2: upload sessions, so that one begun on a replica can go on on another.
    "CREATE TABLE uploads (
         id text PRIMARY KEY,
         repository text NOT NULL,
         client text NOT NULL,
         hasher bytea NOT NULL,
         written bigint NOT NULL,
         parts text[] NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE INDEX uploads_by_client ON uploads (client);
     CREATE INDEX uploads_by_age ON uploads (updated_at);",
    // 3: the collector marks what it is about to remove (see `gc.rs` here).
    "ALTER TABLE blobs ADD COLUMN doomed boolean NOT NULL DEFAULT false;",
    // 4: the on-demand images clients pulled, which a replica prepacks at start.
    "CREATE TABLE pulls (
         image text PRIMARY KEY,
         first_at timestamptz NOT NULL DEFAULT now()
     );",
    // 5: catalog and tag-list pages in byte order whatever the database's locale (as the
    // directory engine and the on-demand names sort), each read as an index range.
    "CREATE INDEX tags_in_byte_order ON tags (repository COLLATE \"C\", tag COLLATE \"C\");
     CREATE INDEX links_in_byte_order ON links (repository COLLATE \"C\");",
    // 6: every repository that has had a tag or a link, in byte order: a catalog page reads
    // a range of it and probes each name once, where it jumped through both indexes of 5
    // (two probes a name). Written in the statement that writes the tag or link, never
    // removed (a page checks that each still holds something), so it cannot miss one.
    "CREATE TABLE repositories (name text COLLATE \"C\" PRIMARY KEY);
     INSERT INTO repositories SELECT repository FROM tags UNION SELECT repository FROM links;",
];

/// The advisory lock one replica's collector holds for its pass.
const GC_LOCK: i64 = 0x7175_696e_6763_6c6b;

/// The advisory lock key under which an upload is admitted (the caps are counted and the
/// session made in one step across replicas).
const ADMISSION_LOCK: i64 = 0x7175_696e_7570_6c64;

/// The advisory lock key under which migrations run (any fixed number of ours).
const MIGRATION_LOCK: i64 = 0x7175_696e_6973_7472;

/// Most connections a replica opens.
const POOL_SIZE: usize = 32;
/// How long a request waits for a connection, or to make one, before it is answered 503.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The metadata database of a shared store.
pub struct Metadata {
    pool: Pool,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata").finish_non_exhaustive()
    }
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

impl From<tokio_postgres::Error> for StoreError {
    /// With the server's own message: tokio-postgres's alone says only "db error".
    fn from(e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(server) => {
                StoreError::Database(format!("{} ({})", server.message(), server.code().code()))
            }
            None => db(e),
        }
    }
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("the database holds a bad {what}: {text:?}")))
}

fn size(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Metadata {
    /// Connects to `url` and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Metadata, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("bad --metadata URL: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(db)?;
        let metadata = Metadata { pool };
        metadata.migrate().await?;
        Ok(metadata)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Database(format!("cannot reach the database: {e}")))
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        Ok(self.client().await?.execute(sql, params).await?)
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        Ok(self.client().await?.query(sql, params).await?)
    }

    async fn row(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, StoreError> {
        self.client()
            .await?
            .query_one(sql, params)
            .await
            .map_err(db)
    }

    async fn maybe_row(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        self.client()
            .await?
            .query_opt(sql, params)
            .await
            .map_err(db)
    }

    /// Applies the migrations this database lacks.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // First, so that replicas starting together take turns: two concurrent CREATE TABLE
        // IF NOT EXISTS of one table can fail (seen: the second replica refused to start).
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS quinistry_schema (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM quinistry_schema",
                &[],
            )
            .await?;
        let current: i32 = row.get(0);
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if current > known {
            return Err(StoreError::Database(format!(
                "the database's schema is version {current}, newer than this quinistry knows ({known}): upgrade quinistry"
            )));
        }
        for (version, sql) in (1..)
            .zip(MIGRATIONS)
            .skip(usize::try_from(current).unwrap_or(0))
        {
            tx.batch_execute(sql).await.map_err(|e| {
                StoreError::Database(format!(
                    "schema migration {version} failed: {}",
                    StoreError::from(e)
                ))
            })?;
            tx.execute(
                "INSERT INTO quinistry_schema (version) VALUES ($1)",
                &[&version],
            )
            .await?;
            tracing::info!(version, "metadata schema migrated");
        }
        Ok(tx.commit().await?)
    }

    /// Whether the database answers.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Records that blob `digest` (of `size` bytes) is stored: after its object is complete.
    pub async fn blob_committed(&self, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.execute(
            "INSERT INTO blobs (digest, size) VALUES ($1, $2)
                 ON CONFLICT (digest) DO UPDATE SET touched_at = now(), doomed = false",
            &[&digest.to_string(), &size],
        )
        .await
        .map(drop)
    }

    /// The size of blob `digest`, `None` if the store does not have it.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let row = self
            .maybe_row(
                "SELECT size FROM blobs WHERE digest = $1 AND NOT doomed",
                &[&digest.to_string()],
            )
            .await?;
        Ok(row.map(|r| size(r.get(0))))
    }

    /// Every blob the store has, sorted.
    pub async fn blobs(&self) -> Result<Vec<Digest>, StoreError> {
        let rows = self
            .rows("SELECT digest FROM blobs ORDER BY digest", &[])
            .await?;
        rows.iter().map(|r| parse(r.get(0), "digest")).collect()
    }

    /// How many blobs and bytes the store holds.
    pub async fn totals(&self) -> Result<(i64, i64), StoreError> {
        let row = self
            .row(
                "SELECT count(*), coalesce(sum(size), 0)::bigint FROM blobs",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }
}

/// Tags, links and referrers are rows written by single statements; the check that a blob
/// exists and its link are one statement, so a delete cannot fall between them.
#[async_trait::async_trait]
impl super::metadata::Metadata for Metadata {
    async fn set_tag(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), StoreError> {
        self.execute(
            "WITH known AS (INSERT INTO repositories VALUES ($1) ON CONFLICT DO NOTHING)
             INSERT INTO tags (repository, tag, digest) VALUES ($1, $2, $3)
                 ON CONFLICT (repository, tag) DO UPDATE SET digest = $3, set_at = now()",
            &[&name.as_str(), &tag.as_str(), &digest.to_string()],
        )
        .await
        .map(drop)
    }

    async fn tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        let row = self
            .maybe_row(
                "SELECT digest FROM tags WHERE repository = $1 AND tag = $2",
                &[&name.as_str(), &tag.as_str()],
            )
            .await?;
        row.map(|r| parse(r.get(0), "digest")).transpose()
    }

    async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "DELETE FROM tags WHERE repository = $1 AND tag = $2",
                &[&name.as_str(), &tag.as_str()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn tags(&self, name: &Name) -> Result<Vec<Tag>, StoreError> {
        let rows = self
            .rows(
                "SELECT tag FROM tags WHERE repository = $1 ORDER BY tag",
                &[&name.as_str()],
            )
            .await?;
        rows.iter().map(|r| parse(r.get(0), "tag")).collect()
    }

    /// Whether something is tagged or linked in `name`.
    async fn has_repository(&self, name: &Name) -> Result<bool, StoreError> {
        let row = self
            .row(
                "SELECT EXISTS (SELECT 1 FROM tags WHERE repository = $1)
                     OR EXISTS (SELECT 1 FROM links WHERE repository = $1)",
                &[&name.as_str()],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn repositories(&self) -> Result<Vec<Name>, StoreError> {
        let rows = self
            .rows(
                "SELECT repository FROM tags UNION SELECT repository FROM links ORDER BY 1",
                &[],
            )
            .await?;
        rows.iter().map(|r| parse(r.get(0), "repository")).collect()
    }

    async fn tags_after(
        &self,
        name: &Name,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tag>, StoreError> {
        // Reads the index of migration 5 in order.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "SELECT tag FROM tags
                 WHERE repository COLLATE \"C\" = $1 AND tag COLLATE \"C\" > $2
                 ORDER BY repository COLLATE \"C\", tag COLLATE \"C\" LIMIT $3",
                &[&name.as_str(), &after.unwrap_or(""), &limit],
            )
            .await?;
        rows.iter().map(|r| parse(r.get(0), "tag")).collect()
    }

    async fn repositories_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Name>, StoreError> {
        // A range of the table of migration 6, each name probed in tags (a repository
        // with a tag is the common case) and then in links. `OFFSET 0` keeps each probe
        // one: without it the planner hashed all of tags per page (50 ms at 100,000
        // repositories, `EXPLAIN ANALYZE`: "hashed SubPlan", a seq scan of 150,000 rows).
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "SELECT name FROM repositories r
                 WHERE name > $1
                   AND (EXISTS (SELECT 1 FROM tags
                                WHERE repository = r.name COLLATE \"default\" OFFSET 0)
                        OR EXISTS (SELECT 1 FROM links
                                   WHERE repository = r.name COLLATE \"default\" OFFSET 0))
                 ORDER BY name LIMIT $2",
                &[&after.unwrap_or(""), &limit],
            )
            .await?;
        rows.iter().map(|r| parse(r.get(0), "repository")).collect()
    }

    /// Links `digest` into `name` and touches the blob; `BlobUnknown` if the store does not
    /// have it. One statement: the check and the link cannot be split by a delete.
    async fn link(&self, name: &Name, kind: Link, digest: &Digest) -> Result<(), StoreError> {
        let d = digest.to_string();
        let n = self
            .execute(
                "WITH blob AS (UPDATE blobs SET touched_at = now(), doomed = false
                               WHERE digest = $3 RETURNING 1),
                      known AS (INSERT INTO repositories SELECT $1 FROM blob
                                ON CONFLICT DO NOTHING)
                 INSERT INTO links (repository, kind, digest)
                 SELECT $1, $2, $3 FROM blob
                 ON CONFLICT (repository, kind, digest) DO UPDATE SET touched_at = now()",
                &[&name.as_str(), &kind.dir(), &d],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::BlobUnknown(digest.clone()));
        }
        Ok(())
    }

    async fn unlink(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "DELETE FROM links WHERE repository = $1 AND kind = $2 AND digest = $3",
                &[&name.as_str(), &kind.dir(), &digest.to_string()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Whether `name` links `digest` and the store has its bytes.
    async fn is_linked(
        &self,
        name: &Name,
        kind: Link,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        let row = self
            .row(
                "SELECT EXISTS (SELECT 1 FROM links JOIN blobs USING (digest)
                                WHERE repository = $1 AND kind = $2 AND digest = $3)",
                &[&name.as_str(), &kind.dir(), &digest.to_string()],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn links(&self, name: &Name, kind: Link) -> Result<Vec<Digest>, StoreError> {
        let rows = self
            .rows(
                "SELECT digest FROM links WHERE repository = $1 AND kind = $2 ORDER BY digest",
                &[&name.as_str(), &kind.dir()],
            )
            .await?;
        rows.iter().map(|r| parse(r.get(0), "digest")).collect()
    }

    async fn add_referrer(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO referrers VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&name.as_str(), &subject.to_string(), &referrer.to_string()],
        )
        .await
        .map(drop)
    }

    async fn remove_referrer(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM referrers WHERE repository = $1 AND subject = $2 AND referrer = $3",
            &[&name.as_str(), &subject.to_string(), &referrer.to_string()],
        )
        .await
        .map(drop)
    }

    async fn referrers(&self, name: &Name, subject: &Digest) -> Result<Vec<Digest>, StoreError> {
        let rows = self
            .rows(
                "SELECT referrer FROM referrers WHERE repository = $1 AND subject = $2
                 ORDER BY referrer",
                &[&name.as_str(), &subject.to_string()],
            )
            .await?;
        rows.iter().map(|r| parse(r.get(0), "digest")).collect()
    }

    async fn referrer_records(&self, name: &Name) -> Result<Vec<(Digest, Digest)>, StoreError> {
        let rows = self
            .rows(
                "SELECT subject, referrer FROM referrers WHERE repository = $1 ORDER BY 1, 2",
                &[&name.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((parse(r.get(0), "digest")?, parse(r.get(1), "digest")?)))
            .collect()
    }

    async fn set_manifest_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO manifest_types VALUES ($1, $2)
                 ON CONFLICT (digest) DO UPDATE SET media_type = $2",
            &[&digest.to_string(), &media_type],
        )
        .await
        .map(drop)
    }

    async fn manifest_type(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        let row = self
            .maybe_row(
                "SELECT media_type FROM manifest_types WHERE digest = $1",
                &[&digest.to_string()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn layer_record(&self, key: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .maybe_row(
                "SELECT record FROM layer_records WHERE key = $1",
                &[&key.to_string()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_layer_record(&self, key: &Digest, record: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO layer_records VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET record = $2",
            &[&key.to_string(), &record],
        )
        .await
        .map(drop)
    }

    async fn layer_records(&self) -> Result<Vec<(Digest, Vec<u8>)>, StoreError> {
        let rows = self
            .rows("SELECT key, record FROM layer_records", &[])
            .await?;
        rows.iter()
            .map(|r| Ok((parse(r.get(0), "digest")?, r.get(1))))
            .collect()
    }

    async fn remove_layer_record(&self, key: &Digest) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM layer_records WHERE key = $1",
            &[&key.to_string()],
        )
        .await
        .map(drop)
    }

    async fn record_pull(&self, image: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO pulls (image) VALUES ($1) ON CONFLICT (image) DO NOTHING",
            &[&image],
        )
        .await
        .map(drop)
    }

    async fn pulls(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .rows("SELECT image FROM pulls ORDER BY image", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Metadata {
    /// Opens upload session `id` in `name` for `client`, unless `max` sessions are open in all
    /// or `per_client` for this client.
    pub async fn upload_open(
        &self,
        id: &str,
        name: &Name,
        client: &str,
        state: &super::Suspended,
        (max, per_client): (usize, usize),
    ) -> Result<Result<(), Refused>, StoreError> {
        let mut client_conn = self.client().await?;
        let tx = client_conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADMISSION_LOCK])
            .await?;
        let row = tx
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE client = $1) FROM uploads",
                &[&client],
            )
            .await?;
        let (all, mine): (i64, i64) = (row.get(0), row.get(1));
        let cap = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        if all >= cap(max) {
            return Ok(Err(Refused::Full(count(all))));
        }
        if mine >= cap(per_client) {
            return Ok(Err(Refused::ClientFull(count(mine))));
        }
        let written = i64::try_from(state.written).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO uploads (id, repository, client, hasher, written, parts)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &name.as_str(),
                &client,
                &state.hasher,
                &written,
                &state.parts,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Upload session `id`: its repository and state; `None` if there is none.
    pub async fn upload(&self, id: &str) -> Result<Option<(String, super::Suspended)>, StoreError> {
        let row = self
            .maybe_row(
                "SELECT repository, hasher, written, parts FROM uploads WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(|r| {
            (
                r.get(0),
                super::Suspended {
                    hasher: r.get(1),
                    written: size(r.get(2)),
                    parts: r.get(3),
                },
            )
        }))
    }

    /// Moves session `id` from `written` bytes to `next`; `false` if it is not at `written`
    /// any more (another request, maybe on another replica, moved it or ended it first).
    pub async fn upload_advance(
        &self,
        id: &str,
        written: u64,
        next: &super::Suspended,
    ) -> Result<bool, StoreError> {
        let from = i64::try_from(written).unwrap_or(i64::MAX);
        let to = i64::try_from(next.written).unwrap_or(i64::MAX);
        let n = self
            .execute(
                "UPDATE uploads SET hasher = $3, written = $4, parts = $5, updated_at = now()
                 WHERE id = $1 AND written = $2",
                &[&id, &from, &next.hasher, &to, &next.parts],
            )
            .await?;
        Ok(n > 0)
    }

    /// Ends session `id` if it is still at `written` bytes; whether it did (then the caller
    /// owns its parts).
    pub async fn upload_end(&self, id: &str, written: u64) -> Result<bool, StoreError> {
        let at = i64::try_from(written).unwrap_or(i64::MAX);
        let n = self
            .execute(
                "DELETE FROM uploads WHERE id = $1 AND written = $2",
                &[&id, &at],
            )
            .await?;
        Ok(n > 0)
    }

    /// Ends the sessions that made no progress for `idle`; their parts, for the caller to
    /// remove.
    pub async fn uploads_expire(&self, idle: Duration) -> Result<Vec<String>, StoreError> {
        let secs = idle.as_secs_f64();
        let rows = self
            .rows(
                "DELETE FROM uploads WHERE updated_at < now() - make_interval(secs => $1)
                 RETURNING parts",
                &[&secs],
            )
            .await?;
        Ok(rows
            .iter()
            .flat_map(|r| r.get::<_, Vec<String>>(0))
            .collect())
    }

    /// The upload sessions open now, across replicas.
    pub async fn uploads_open(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.rows("SELECT id FROM uploads ORDER BY id", &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Takes repository `name`'s lock, shared by every replica (a session advisory lock on a
    /// connection of its own, held until the guard is dropped).
    pub async fn lock_repository(&self, name: &Name) -> Result<AdvisoryLock, StoreError> {
        self.advisory(format!("quinistry/repository/{name}")).await
    }

    /// Takes blob `digest`'s lock: held by a writer from its check of whether the blob
    /// exists to its record of it, and by the collector from its last check to the removal
    /// of the object, so neither can come between the other's steps.
    pub async fn lock_digest(&self, digest: &Digest) -> Result<AdvisoryLock, StoreError> {
        self.advisory(format!("quinistry/blob/{digest}")).await
    }

    async fn advisory(&self, key: String) -> Result<AdvisoryLock, StoreError> {
        let client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])
            .await?;
        Ok(AdvisoryLock {
            held: Some((client, Unlock::Key(key))),
        })
    }

    /// The collector's lock, if no other replica holds it.
    pub async fn try_lock_collector(&self) -> Result<Option<AdvisoryLock>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&GC_LOCK])
            .await?;
        Ok(row.get::<_, bool>(0).then(|| AdvisoryLock {
            held: Some((client, Unlock::Number(GC_LOCK))),
        }))
    }

    /// The tags of `name`, each with its manifest and whether that manifest's link was last
    /// touched (pulled, for a mirror's) longer than `age` ago.
    pub async fn tags_pulled(
        &self,
        name: &Name,
        age: Duration,
    ) -> Result<Vec<(String, String, bool)>, StoreError> {
        let rows = self
            .rows(
                "SELECT t.tag, t.digest,
                        coalesce(l.touched_at < now() - make_interval(secs => $2), false)
                 FROM tags t LEFT JOIN links l ON l.repository = t.repository
                     AND l.kind = '_manifests' AND l.digest = t.digest
                 WHERE t.repository = $1",
                &[&name.as_str(), &age.as_secs_f64()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Removes `tags` of `name` whose manifest's link is still untouched for `age` (a pull
    /// since the decision keeps them); how many (with `dry_run`, how many would go).
    pub async fn remove_unpulled_tags(
        &self,
        name: &Name,
        tags: &[String],
        age: Duration,
        dry_run: bool,
    ) -> Result<usize, StoreError> {
        if dry_run {
            return Ok(tags.len());
        }
        let n = self
            .execute(
                "DELETE FROM tags t USING links l
                 WHERE t.repository = $1 AND t.tag = ANY($2) AND l.repository = $1
                   AND l.kind = '_manifests' AND l.digest = t.digest
                   AND l.touched_at < now() - make_interval(secs => $3)",
                &[&name.as_str(), &tags, &age.as_secs_f64()],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Removes the manifest links of `name` that none of `kept` is, untouched for `age`,
    /// and their referrer records; how many (with `dry_run`, how many would go). Run under
    /// the repository's lock.
    pub async fn remove_unpulled_manifests(
        &self,
        name: &Name,
        kept: &[String],
        age: Duration,
        dry_run: bool,
    ) -> Result<usize, StoreError> {
        let sql = if dry_run {
            "SELECT count(*) FROM links WHERE repository = $1 AND kind = '_manifests'
             AND touched_at < now() - make_interval(secs => $3) AND NOT (digest = ANY($2))"
        } else {
            "WITH gone AS (DELETE FROM links WHERE repository = $1 AND kind = '_manifests'
                 AND touched_at < now() - make_interval(secs => $3) AND NOT (digest = ANY($2))
                 RETURNING digest),
             refs AS (DELETE FROM referrers WHERE repository = $1
                 AND referrer IN (SELECT digest FROM gone))
             SELECT count(*) FROM gone"
        };
        let row = self
            .row(sql, &[&name.as_str(), &kept, &age.as_secs_f64()])
            .await?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Removes the blob links of `name` that none of `named` is and that were last touched
    /// longer than `grace` ago; how many (with `dry_run`, how many would go). Run under the
    /// repository's lock, so no manifest push in it is between its check and its link.
    pub async fn remove_stale_blob_links(
        &self,
        name: &Name,
        named: &[String],
        grace: Duration,
        dry_run: bool,
    ) -> Result<usize, StoreError> {
        let sql = if dry_run {
            "SELECT count(*) FROM links WHERE repository = $1 AND kind = '_blobs'
             AND touched_at < now() - make_interval(secs => $3) AND NOT (digest = ANY($2))"
        } else {
            "WITH gone AS (DELETE FROM links WHERE repository = $1 AND kind = '_blobs'
                 AND touched_at < now() - make_interval(secs => $3) AND NOT (digest = ANY($2))
                 RETURNING 1)
             SELECT count(*) FROM gone"
        };
        let row = self
            .row(sql, &[&name.as_str(), &named, &grace.as_secs_f64()])
            .await?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Counts the blobs: all, unreachable (no link, not a root), and of those how many were
    /// touched within `grace`.
    pub async fn count_unreachable(
        &self,
        roots: &[String],
        grace: Duration,
    ) -> Result<(usize, usize, usize), StoreError> {
        let row = self.row(
                "SELECT count(*),
                        count(*) FILTER (WHERE u),
                        count(*) FILTER (WHERE u AND touched_at >= now() - make_interval(secs => $2))
                 FROM (SELECT touched_at,
                              NOT EXISTS (SELECT 1 FROM links l WHERE l.digest = b.digest)
                              AND NOT (digest = ANY($1)) AS u
                       FROM blobs b) t",
                &[&roots, &grace.as_secs_f64()],
            ).await?;
        let n = |i: usize| usize::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok((n(0), n(1), n(2)))
    }

    /// Marks the blobs no link names, none of `roots` is, and untouched for `grace`: the
    /// collector's candidates (with `dry_run`, only lists them). Each with its size.
    pub async fn doom(
        &self,
        roots: &[String],
        grace: Duration,
        dry_run: bool,
    ) -> Result<Vec<(Digest, u64)>, StoreError> {
        let filter = "NOT EXISTS (SELECT 1 FROM links l WHERE l.digest = blobs.digest)
                      AND NOT (digest = ANY($1))
                      AND touched_at < now() - make_interval(secs => $2)";
        let sql = if dry_run {
            format!("SELECT digest, size FROM blobs WHERE {filter}")
        } else {
            format!("UPDATE blobs SET doomed = true WHERE {filter} RETURNING digest, size")
        };
        let rows = self.rows(&sql, &[&roots, &grace.as_secs_f64()]).await?;
        rows.iter()
            .map(|r| Ok((parse(r.get(0), "digest")?, size(r.get(1)))))
            .collect()
    }

    /// Removes doomed blob `digest`'s record if it is still doomed, unlinked and untouched
    /// for `grace` (a push since un-dooms it); whether it did. The caller holds the blob's
    /// lock and removes the object after: a crash between leaves an object no record names
    /// (garbage), never a record without its object.
    pub async fn remove_doomed(
        &self,
        digest: &Digest,
        grace: Duration,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "DELETE FROM blobs WHERE digest = $1 AND doomed
                 AND touched_at < now() - make_interval(secs => $2)
                 AND NOT EXISTS (SELECT 1 FROM links l WHERE l.digest = $1)",
                &[&digest.to_string(), &grace.as_secs_f64()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Un-dooms what a pass marked but did not remove (it stopped early).
    pub async fn spare_doomed(&self) -> Result<(), StoreError> {
        self.execute("UPDATE blobs SET doomed = false WHERE doomed", &[])
            .await
            .map(drop)
    }
}

/// What a lock's release names: a key hashed by the server, or a number.
enum Unlock {
    Key(String),
    Number(i64),
}

/// An advisory lock held across replicas (a repository's, a blob's, the collector's); let
/// go when dropped.
pub struct AdvisoryLock {
    held: Option<(Object, Unlock)>,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some((client, key)) = self.held.take() else {
            return;
        };
        let unlock = async move {
            let unlocked = match &key {
                Unlock::Key(k) => {
                    client
                        .execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[k])
                        .await
                }
                Unlock::Number(n) => client.execute("SELECT pg_advisory_unlock($1)", &[n]).await,
            };
            if unlocked.is_err() {
                // Never hand a connection that may still hold the lock back to the pool:
                // closing it lets go of the lock.
                drop(Object::take(client));
            }
        };
        // No runtime (shutdown): the connection closes with the process.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            drop(rt.spawn(unlock));
        }
    }
}
