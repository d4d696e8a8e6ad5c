//! cgroup v2 directories sbx creates and removes.

use std::path::Path;
use std::time::Duration;

use super::SysError;

/// Removes the cgroup at `path` and every cgroup below it. Below a sandbox's cgroup there
/// should be nothing, but a command that got to make cgroups (in a cgroup namespace of its
/// own, say) must not leave its sandbox's slot unusable: then whatever still runs in the tree
/// is killed (`cgroup.kill`, Linux 5.14) and the tree removed from its leaves up.
pub fn remove_tree(path: &Path) -> Result<(), SysError> {
    match std::fs::remove_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let leaves_first = walkdir::WalkDir::new(path)
        .contents_first(true)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_dir());
    for entry in leaves_first {
        remove_empty(entry.path())?;
    }
    Ok(())
}

/// Removes an empty cgroup; its last processes may take a moment to leave it.
fn remove_empty(path: &Path) -> Result<(), SysError> {
    const ATTEMPTS: u32 = 2000;
    for attempt in 1..=ATTEMPTS {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < ATTEMPTS => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                return Err(SysError::new(
                    format!("remove cgroup {}", path.display()),
                    e,
                ));
            }
        }
    }
    unreachable!("the last attempt returns")
}
