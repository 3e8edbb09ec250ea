//! Pull records: which on-demand images clients have pulled, so that a restarted server
//! prepacks those (and what is configured), not every program under a large `--root`.
//!
//! A directory store keeps one small file per image under `pulls/`, named by the sha256 of
//! the image's `NAME:TAG` and holding it; a shared store keeps a row per image. A record is
//! written once: later pulls of the same image only check that it is there.

use std::io;

use super::{Result, Store, blocking, ctx};
use crate::digest::Digest;

impl Store {
    fn pulls_dir(&self) -> std::path::PathBuf {
        self.root.join("pulls")
    }

    /// Records that `image` (`NAME:TAG`) was pulled, if it was not recorded before.
    pub async fn record_pull(&self, image: &str) -> Result<()> {
        if let Some(shared) = self.shared() {
            return shared.meta.record_pull(image).await;
        }
        let dir = self.pulls_dir();
        let path = dir.join(Digest::sha256_of(image.as_bytes()).hex());
        if tokio::fs::metadata(&path).await.is_ok() {
            return Ok(());
        }
        let s = self.clone();
        let bytes = image.as_bytes().to_vec();
        blocking(move || {
            ctx(std::fs::create_dir_all(&dir), "create directory", &dir)?;
            s.write_record("pull-", &path, &bytes, "write pull record")
        })
        .await
    }

    /// Every image pulled, as `NAME:TAG`, sorted.
    pub async fn pulls(&self) -> Result<Vec<String>> {
        if let Some(shared) = self.shared() {
            return shared.meta.pulls().await;
        }
        let dir = self.pulls_dir();
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return ctx(Err(e), "list", &dir),
            };
            let mut out = Vec::new();
            for entry in entries {
                let path = ctx(entry, "list", &dir)?.path();
                match std::fs::read_to_string(&path) {
                    Ok(image) => out.push(image),
                    // A record is never removed while we run; a vanished one is not a pull.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return ctx(Err(e), "read", &path),
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::fresh;

    #[tokio::test]
    async fn a_pull_is_recorded_once_and_listed() {
        let (_dir, store) = fresh().await;
        assert!(store.pulls().await.expect("pulls").is_empty());
        store.record_pull("bin/ls:latest").await.expect("record");
        store.record_pull("bin/ls:latest").await.expect("again");
        store.record_pull("pkgs/git:latest").await.expect("record");
        assert_eq!(
            store.pulls().await.expect("pulls"),
            ["bin/ls:latest", "pkgs/git:latest"]
        );
    }
}
