//! Watching the policy file of `skpc run`, so that an edit is enforced without a signal.
//!
//! Polled, not inotify: the ways a file gets replaced in production all change what
//! `stat` says of the path as it resolves now, and a poll of one `stat` every 200 ms
//! sees them all with nothing to re-arm:
//! - an in-place edit (same inode, new size or mtime);
//! - an editor that writes a new file and renames it over the old one (new inode);
//! - a Kubernetes ConfigMap update: `policy.skp -> ..data/policy.skp` where the `..data`
//!   symlink is swapped to a new timestamped directory (the path resolves to a new inode);
//! - a file that is briefly missing (kept; the running policy stays in force).
//!
//! A change in place is acted on once the file has looked the same for two polls in a
//! row, so that a half-written file (an in-place `>` redirect caught mid-write) is not
//! compiled. A path that resolves to another file (a rename over it, a ConfigMap swap) is
//! acted on at the first poll: a rename is atomic, the new file was complete before it.
//! Either way, only when its bytes differ from the version last loaded (a `touch`
//! reloads nothing).

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// What `stat` says of the file (following symlinks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// What a poll found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing to do.
    None,
    /// The file is gone (reported once per disappearance).
    Missing,
    /// The file has new contents, stable for two polls: reload it.
    Changed,
}

pub(crate) struct Watch {
    path: PathBuf,
    /// The stamp of the version last acted on (loaded, or refused).
    seen: Option<Stamp>,
    /// A new stamp seen once, waiting for a second poll to agree.
    pending: Option<Stamp>,
    /// The digest of the bytes last acted on.
    acted: Option<u64>,
    missing: bool,
}

impl Watch {
    /// Watches `path`, whose current contents are in force.
    pub(crate) fn new(path: PathBuf) -> Watch {
        let mut w = Watch {
            path,
            seen: None,
            pending: None,
            acted: None,
            missing: false,
        };
        w.acted_on_current();
        w
    }

    /// Records the file as it is now as acted on (after a reload by SIGHUP, say).
    pub(crate) fn acted_on_current(&mut self) {
        self.seen = stamp(&self.path);
        self.pending = None;
        self.acted = fs::read(&self.path).ok().map(|b| digest(&b));
    }

    pub(crate) fn poll(&mut self) -> Change {
        let Some(now) = stamp(&self.path) else {
            self.pending = None;
            if self.missing {
                return Change::None;
            }
            self.missing = true;
            return Change::Missing;
        };
        let was_missing = std::mem::replace(&mut self.missing, false);
        if Some(now) == self.seen {
            self.pending = None;
            return Change::None;
        }
        // Another file at the path (not one created after the path was seen missing,
        // which may still be being written).
        let replaced = !was_missing
            && self
                .seen
                .is_some_and(|s| (s.dev, s.ino) != (now.dev, now.ino));
        if self.pending != Some(now) && !replaced {
            self.pending = Some(now);
            return Change::None;
        }
        // Stable for two polls: look at the bytes.
        self.pending = None;
        self.seen = Some(now);
        let Ok(bytes) = fs::read(&self.path) else {
            return Change::None;
        };
        let d = digest(&bytes);
        if Some(d) == self.acted {
            return Change::None;
        }
        self.acted = Some(d);
        Change::Changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("skpc-watch-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Polls until something other than `None` (at most a few polls).
    fn settle(w: &mut Watch) -> Change {
        for _ in 0..4 {
            match w.poll() {
                Change::None => {}
                c => return c,
            }
        }
        Change::None
    }

    #[test]
    fn in_place_rename_and_configmap_swaps_are_seen_once_and_touch_is_not() {
        let d = dir("kinds");
        let file = d.join("p.skp");
        fs::write(&file, "pass;").unwrap();
        let mut w = Watch::new(file.clone());
        assert_eq!(settle(&mut w), Change::None);
        // In place.
        fs::write(&file, "drop;").unwrap();
        assert_eq!(settle(&mut w), Change::Changed);
        assert_eq!(settle(&mut w), Change::None);
        // A touch: same bytes, new mtime.
        fs::write(&file, "drop;").unwrap();
        assert_eq!(settle(&mut w), Change::None);
        // An editor's write-and-rename.
        let tmp = d.join(".p.skp.swp");
        fs::write(&tmp, "pass if len > 1;").unwrap();
        fs::rename(&tmp, &file).unwrap();
        assert_eq!(settle(&mut w), Change::Changed);
        // Briefly missing, then back with new contents.
        fs::remove_file(&file).unwrap();
        assert_eq!(w.poll(), Change::Missing);
        assert_eq!(w.poll(), Change::None);
        fs::write(&file, "drop if len > 2;").unwrap();
        assert_eq!(settle(&mut w), Change::Changed);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_configmap_symlink_swap_is_a_change() {
        let d = dir("configmap");
        let (a, b) = (d.join("..2026_12_01_a"), d.join("..2026_12_01_b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("policy.skp"), "pass;").unwrap();
        fs::write(b.join("policy.skp"), "drop;").unwrap();
        std::os::unix::fs::symlink("..2026_12_01_a", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.skp", d.join("policy.skp")).unwrap();
        let mut w = Watch::new(d.join("policy.skp"));
        assert_eq!(settle(&mut w), Change::None);
        // What the kubelet does: a new `..data` link, renamed over the old one.
        std::os::unix::fs::symlink("..2026_12_01_b", d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_eq!(settle(&mut w), Change::Changed);
        assert_eq!(settle(&mut w), Change::None);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_renamed_over_the_path_is_acted_on_at_the_first_poll() {
        let d = dir("renamed");
        let file = d.join("feed.txt");
        fs::write(&file, "10.0.0.0/8\n").unwrap();
        let mut w = Watch::new(file.clone());
        let tmp = d.join(".feed.txt.new");
        fs::write(&tmp, "10.0.0.0/8\n192.0.2.0/24\n").unwrap();
        fs::rename(&tmp, &file).unwrap();
        assert_eq!(w.poll(), Change::Changed, "complete before the rename");
        assert_eq!(w.poll(), Change::None);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_change_waits_for_a_second_poll_that_agrees() {
        let d = dir("stable");
        let file = d.join("p.skp");
        fs::write(&file, "pass;").unwrap();
        let mut w = Watch::new(file.clone());
        fs::write(&file, "drop if").unwrap();
        assert_eq!(w.poll(), Change::None, "first sight: wait");
        fs::write(&file, "drop if len > 1;").unwrap();
        assert_eq!(w.poll(), Change::None, "changed again: wait again");
        assert_eq!(w.poll(), Change::Changed);
        let _ = fs::remove_dir_all(&d);
    }
}
