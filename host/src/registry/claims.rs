//! Collecting blobs no record holds, safely beside uploads in progress.
//!
//! An upload stores its blob before its version is recorded, and an upload
//! of bytes already stored reuses the blob it finds. So that collecting a
//! digest no version holds never takes a blob from under such an upload,
//! the upload claims its digest before it looks for the blob, and keeps
//! the claim until its version is in the index; collection looks at the
//! index and the claims, and deletes, under one lock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::StoreError;

/// The digests of uploads in progress, with how many of each.
#[derive(Debug, Default)]
pub struct Claims {
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// An upload's hold on its digest, given up when dropped.
#[derive(Debug)]
pub struct Claim {
    held: Arc<Mutex<HashMap<String, usize>>>,
    digest: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.digest) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.digest);
            }
        }
    }
}

impl Claims {
    /// Claims `digest` for an upload: it is not collected until the claim
    /// is dropped.
    pub fn claim(&self, digest: &str) -> Claim {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        *held.entry(digest.to_string()).or_default() += 1;
        Claim {
            held: self.held.clone(),
            digest: digest.to_string(),
        }
    }

    /// Deletes (with `delete`) each of `digests` that is neither in what
    /// `in_use` returns (the digests recorded versions hold, read under
    /// the lock) nor claimed. Returns how many it deleted.
    pub fn collect(
        &self,
        digests: impl IntoIterator<Item = String>,
        in_use: impl FnOnce() -> HashSet<String>,
        mut delete: impl FnMut(&str) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let in_use = in_use();
        let mut collected = 0;
        for digest in digests {
            if !in_use.contains(&digest) && !held.contains_key(&digest) {
                delete(&digest)?;
                collected += 1;
            }
        }
        Ok(collected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_and_used_digests_are_kept() {
        let claims = Claims::default();
        let claim = claims.claim("a");
        let twice = claims.claim("a");
        let mut deleted = Vec::new();
        let all = || ["a", "b", "c"].map(String::from);
        let used = || HashSet::from(["b".to_string()]);
        let mut delete = |d: &str| {
            deleted.push(d.to_string());
            Ok(())
        };
        assert_eq!(
            claims.collect(all(), used, &mut delete).expect("collects"),
            1
        );
        drop(claim);
        assert_eq!(
            claims.collect(all(), used, &mut delete).expect("collects"),
            1
        );
        drop(twice);
        assert_eq!(
            claims.collect(all(), used, &mut delete).expect("collects"),
            2
        );
        assert_eq!(deleted, ["c", "c", "a", "c"]);
    }
}
