//! The set-user-ID and set-group-ID rule for changes of a file's data or owner.
//!
//! As ext4 on this kernel (`should_remove_suid`, `setattr_should_drop_sgid`): when a
//! writer without CAP_FSETID writes, truncates or allocates, the file loses S_ISUID,
//! and S_ISGID too when the group may execute it or the writer is not in the file's
//! group. Otherwise a user who may write a set-user-ID program could plant code
//! that runs as its owner. A change of owner or group (chown) clears S_ISUID
//! always, and S_ISGID when the group may execute or the changer is an
//! unprivileged one outside the file's group (`chown_common`): the mount asks the
//! kernel to leave both to it (FUSE_HANDLE_KILLPRIV_V2), which saves a GETXATTR
//! per write and a GETATTR per chown. Who the writer is comes from the adapter,
//! which knows the request.

/// Who changes a file's data.
pub enum Writer<'a> {
    /// A writer with CAP_FSETID (root), or the kernel writing back cached pages
    /// (no writer to speak of; ext4 keeps the bits for mmap writes too): bits stay.
    Privileged,
    /// A writer without CAP_FSETID; `in_group(gid)` says whether it is in group `gid`
    /// (asked only for a file with S_ISGID and no group execute).
    Unprivileged { in_group: &'a dyn Fn(u32) -> bool },
}

/// `mode` (07777 bits) after `writer` changed the data of a file of group `gid`.
pub fn mode_after_change(mode: u32, gid: u32, writer: &Writer<'_>) -> u32 {
    match writer {
        Writer::Privileged => mode,
        Writer::Unprivileged { in_group } => without_set_ids(mode, || !in_group(gid)),
    }
}

/// `mode` (07777 bits) of a non-folder of group `gid` after `writer` changed its
/// owner or group.
pub fn mode_after_chown(mode: u32, gid: u32, writer: &Writer<'_>) -> u32 {
    without_set_ids(mode, || match writer {
        Writer::Privileged => false,
        Writer::Unprivileged { in_group } => !in_group(gid),
    })
}

/// `mode` without S_ISUID, and without S_ISGID when the group may execute or
/// `outsider()` (asked only for S_ISGID without group execute) says so.
fn without_set_ids(mode: u32, outsider: impl FnOnce() -> bool) -> u32 {
    let mut mode = mode & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || outsider()) {
        mode &= !libc::S_ISGID;
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chown_clears_what_chown_common_clears() {
        let outside = Writer::Unprivileged { in_group: &|_| false };
        let inside = Writer::Unprivileged {
            in_group: &|g| g == 100,
        };
        let root = Writer::Privileged;
        assert_eq!(
            mode_after_chown(0o4755, 100, &root),
            0o755,
            "set-user-ID always goes"
        );
        assert_eq!(
            mode_after_chown(0o2777, 100, &root),
            0o777,
            "group execute: set-group-ID goes"
        );
        assert_eq!(
            mode_after_chown(0o2767, 100, &root),
            0o2767,
            "no group execute: kept for root"
        );
        assert_eq!(mode_after_chown(0o2767, 100, &inside), 0o2767);
        assert_eq!(mode_after_chown(0o2767, 100, &outside), 0o767);
        assert_eq!(mode_after_chown(0o1777, 100, &outside), 0o1777, "sticky stays");
    }

    #[test]
    fn an_unprivileged_writer_clears_what_ext4_clears() {
        let outside = Writer::Unprivileged { in_group: &|_| false };
        let inside = Writer::Unprivileged {
            in_group: &|g| g == 100,
        };
        assert_eq!(mode_after_change(0o4777, 100, &outside), 0o777);
        assert_eq!(
            mode_after_change(0o6777, 100, &inside),
            0o777,
            "group execute: both go"
        );
        assert_eq!(
            mode_after_change(0o2767, 100, &inside),
            0o2767,
            "in group, no execute: kept"
        );
        assert_eq!(
            mode_after_change(0o2767, 100, &outside),
            0o767,
            "outside the group: cleared"
        );
        assert_eq!(
            mode_after_change(0o1777, 100, &outside),
            0o1777,
            "sticky is not a privilege"
        );
        assert_eq!(mode_after_change(0o6777, 100, &Writer::Privileged), 0o6777);
    }
}
