//! Files that sbx, running as root, writes for the user who ran it: `--events`, and any later
//! output of the same kind (a learned policy, say).
//!
//! The danger is a root process writing where a less privileged one points it: the command (or
//! another process of its user) replaces the file with a symbolic link or a hard link to
//! `/etc/shadow`, and root overwrites that. So such a file is:
//!
//! - opened **before the command starts**, and written later through that descriptor only: what
//!   the path names afterwards does not matter, and a path replaced meanwhile is reported
//!   ([`UserFile::replaced`]) rather than written through;
//! - opened **with the invoking user's rights** when that user is not root (sudo's `SUDO_UID`):
//!   a thread of its own switches its file-system uid, gid and groups to the user's, drops its
//!   capabilities, opens the file and ends. The kernel then checks every directory of the path
//!   and the file itself against that user, so sbx can neither create nor truncate a file where
//!   the user could not, and what it creates is the user's. Credentials are per thread in the
//!   kernel; the calls are made raw because the C library's `setgroups` changes every thread of
//!   the process. Other threads of sbx keep root's credentials throughout;
//! - never followed through a symbolic link at its last component (`O_NOFOLLOW`), and refused
//!   unless it is a regular file with no other hard link (the check comes before the file is
//!   emptied, so a refused file is left as it was). A FIFO cannot block sbx (`O_NONBLOCK`).
//!
//! When root itself runs sbx (with or without `--user`), the file is opened with root's rights
//! before the command starts: the command cannot touch it in time, and what an earlier run left
//! at the last component (a link, a FIFO) is refused. Directories named in the path are root's
//! choice, as for any root command given a path.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::SysError;

/// A user's file-system rights: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// A file opened for writing by [`create_for`].
#[derive(Debug)]
pub struct UserFile {
    pub file: File,
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl UserFile {
    /// Makes `bytes` the whole file: unless its path was replaced meanwhile, it is emptied first,
    /// so that nothing the command wrote into it (it is the user's file) stays after sbx's
    /// output and passes for part of it.
    pub fn write_whole(&mut self, bytes: &[u8]) -> Result<(), SysError> {
        use std::io::{Seek, Write};
        let step = || format!("write {}", self.path.display());
        if self.replaced() {
            return Err(SysError::new(
                step(),
                "the file was removed or replaced while the command ran (a link, say); sbx \
                 wrote nothing through what is there now",
            ));
        }
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(bytes))
            .map_err(|e| SysError::new(step(), e))
    }

    /// Whether `path` no longer names the file that was opened (removed, or replaced by a link
    /// or another file).
    pub fn replaced(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(now) => (now.dev(), now.ino()) != (self.dev, self.ino),
            Err(_) => true,
        }
    }
}

/// Opens `path` for writing, empty: created (mode 0666 less the umask) if missing, with `rights`
/// if given (else sbx's own), never through a symbolic link, only if it is a regular file with no
/// other hard link. Close-on-exec, as every file std opens.
pub fn create_for(path: &Path, rights: Option<&Rights>) -> Result<UserFile, SysError> {
    let step = || format!("open {} for writing", path.display());
    let file = match rights {
        None => open_no_follow(path),
        Some(rights) => {
            let (rights, owned) = (rights.clone(), path.to_path_buf());
            std::thread::Builder::new()
                .name("sbx-open-as-user".into())
                .spawn(move || {
                    become_user_in_this_thread(&rights)?;
                    open_no_follow(&owned)
                })
                .map_err(|e| SysError::new(step(), e))?
                .join()
                .map_err(|_| SysError::new(step(), "the thread that opens it failed"))?
        }
    }
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => SysError::new(
            step(),
            "it is a symbolic link, and sbx does not write through one",
        ),
        Some(libc::ENXIO) => SysError::new(step(), "it is a FIFO or a socket, not a file"),
        _ => SysError::new(step(), e),
    })?;
    let meta = file.metadata().map_err(|e| SysError::new(step(), e))?;
    if !meta.file_type().is_file() {
        return Err(SysError::new(step(), "it is not a regular file"));
    }
    if meta.nlink() > 1 {
        return Err(SysError::new(
            step(),
            format!(
                "it has {} hard links, and sbx writes only a file that has no other name",
                meta.nlink()
            ),
        ));
    }
    file.set_len(0).map_err(|e| SysError::new(step(), e))?;
    Ok(UserFile {
        file,
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Gives the calling thread, and only it, `rights` for the file system, and no capability. Meant
/// for a thread that ends right after its work.
fn become_user_in_this_thread(rights: &Rights) -> io::Result<()> {
    let check = |ret: libc::c_long| {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: raw system calls on this thread's own credentials; the group list outlives the
    // call and its length is passed with it.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            rights.groups.len(),
            rights.groups.as_ptr(),
        ))?;
        // setfsuid and setfsgid return the previous id and no error: read them back.
        libc::syscall(libc::SYS_setfsgid, rights.gid);
        libc::syscall(libc::SYS_setfsuid, rights.uid);
        let (fsgid, fsuid) = (
            libc::syscall(libc::SYS_setfsgid, u32::MAX),
            libc::syscall(libc::SYS_setfsuid, u32::MAX),
        );
        if (fsuid, fsgid) != (rights.uid.into(), rights.gid.into()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "cannot take the file-system ids {}:{} (have {fsuid}:{fsgid})",
                    rights.uid, rights.gid
                ),
            ));
        }
    }
    // A fsuid other than 0 already clears the file-system capabilities; clearing all of them
    // also covers an sbx whose real user is not root (file capabilities).
    ::caps::clear(None, ::caps::CapSet::Effective).map_err(io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_links_and_keeps_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_for(&link, None).unwrap_err();
        assert!(e.cause.contains("symbolic link"), "{e}");
        let hard = dir.path().join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        let e = create_for(&hard, None).unwrap_err();
        assert!(e.cause.contains("hard links"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    }

    #[test]
    fn empties_a_file_and_sees_it_replaced() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        std::fs::write(&path, "old old old").unwrap();
        let mut out = create_for(&path, None).unwrap();
        assert!(!out.replaced());
        out.file.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &path).unwrap();
        assert!(out.replaced());
    }
}
