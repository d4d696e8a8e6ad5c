//! What sbx keeps on the host while sandboxes run, in one place: `/run/sbx` (a tmpfs, so a reboot
//! clears it).
//!
//! - `lock`: held while a sandbox is set up or torn down, and by `sbx gc`, so those never
//!   interleave.
//! - `slots/N`: held (flock) by the live sbx that owns slot N for as long as it runs. The slot
//!   number names everything the sandbox creates on the host (nft table `sbx_N`, links `sbxNh` /
//!   `sbxNs`, subnet number N), so nothing collides. The lock *is* the liveness: when an sbx dies,
//!   even by SIGKILL, the kernel releases it, and the next sbx (or `sbx gc`) knows slot N's
//!   leftovers are safe to remove.
//! - `forwarding`: the IP forwarding sysctls as they were before the first live sandbox turned
//!   them on; restored when the last one ends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::sys::{Step, SysError, sysctl};

pub const STATE_DIR: &str = "/run/sbx";

/// Slot numbers go up to this bound; it also bounds the subnets (see `net`).
pub const MAX_SLOTS: u32 = 16_384;

/// The forwarding sysctls a sandbox with a network needs; everything else stays as it is.
pub const FORWARDING_SYSCTLS: &[&str] = &["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];

pub struct State {
    dir: PathBuf,
}

/// The global lock, held for one setup, teardown or gc.
pub struct Locked<'a> {
    state: &'a State,
    _lock: Flock<File>,
}

/// A claimed slot; dropping it releases the claim (the file stays for `release`).
pub struct Slot {
    pub index: u32,
    path: PathBuf,
    _lock: Flock<File>,
}

impl State {
    pub fn open() -> Result<State, SysError> {
        State::at(Path::new(STATE_DIR))
    }

    pub fn at(dir: &Path) -> Result<State, SysError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("slots"))
            .step(|| format!("create the state directory {}", dir.display()))?;
        Ok(State {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lock(&self) -> Result<Locked<'_>, SysError> {
        let file = open_lock_file(&self.dir.join("lock"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .step(|| format!("lock {}", self.dir.join("lock").display()))?;
        Ok(Locked {
            state: self,
            _lock: lock,
        })
    }
}

fn open_lock_file(path: &Path) -> Result<File, SysError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .step(|| format!("open {}", path.display()))
}

fn try_lock(path: &Path) -> Result<Option<Flock<File>>, SysError> {
    let file = open_lock_file(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(SysError::new(format!("lock {}", path.display()), e)),
    }
}

impl Locked<'_> {
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    fn slot_path(&self, index: u32) -> PathBuf {
        self.state.dir.join("slots").join(index.to_string())
    }

    fn slot_files(&self) -> Result<Vec<u32>, SysError> {
        let dir = self.state.dir.join("slots");
        let mut indices: Vec<u32> = std::fs::read_dir(&dir)
            .step(|| format!("list {}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        indices.sort_unstable();
        Ok(indices)
    }

    /// Claims the lowest free slot. A slot whose file exists but whose lock is free belonged to
    /// an sbx that died: its index is returned in `stale` so the caller removes its leftovers
    /// before using it.
    pub fn claim(&self, stale: &mut Vec<u32>) -> Result<Slot, SysError> {
        for index in 0..MAX_SLOTS {
            let path = self.slot_path(index);
            let existed = path.exists();
            if let Some(lock) = try_lock(&path)? {
                if existed {
                    stale.push(index);
                }
                let mut file = lock
                    .try_clone()
                    .step(|| format!("write {}", path.display()))?;
                let _ = file.set_len(0);
                let _ = writeln!(file, "{}", std::process::id());
                return Ok(Slot {
                    index,
                    path,
                    _lock: lock,
                });
            }
        }
        Err(SysError::new(
            "claim a sandbox slot",
            format!("all {MAX_SLOTS} slots are in use"),
        ))
    }

    /// Slots whose sbx is gone (file present, lock free), for `sbx gc`. Each is locked while
    /// returned, so nothing claims it during the clean-up.
    pub fn dead_slots(&self) -> Result<Vec<Slot>, SysError> {
        let mut dead = Vec::new();
        for index in self.slot_files()? {
            let path = self.slot_path(index);
            if let Some(lock) = try_lock(&path)? {
                dead.push(Slot {
                    index,
                    path,
                    _lock: lock,
                });
            }
        }
        Ok(dead)
    }

    /// How many slots are held by live sbx processes (this one's included).
    pub fn live_slots(&self) -> Result<usize, SysError> {
        let mut live = 0;
        for index in self.slot_files()? {
            if try_lock(&self.slot_path(index))?.is_none() {
                live += 1;
            }
        }
        Ok(live)
    }

    /// Turns IP forwarding on, first recording the values found, unless a live sandbox already
    /// did.
    pub fn enable_forwarding(&self) -> Result<(), SysError> {
        let record = self.state.dir.join("forwarding");
        if !record.exists() {
            let mut saved = String::new();
            for name in FORWARDING_SYSCTLS {
                saved.push_str(&format!("{name}={}\n", sysctl::read(name)?));
            }
            std::fs::write(&record, saved).step(|| format!("write {}", record.display()))?;
        }
        for name in FORWARDING_SYSCTLS {
            sysctl::write(name, "1")?;
        }
        Ok(())
    }

    /// Puts the forwarding sysctls back as recorded, when no live sandbox needs them.
    pub fn restore_forwarding_if_unused(&self) -> Result<(), SysError> {
        let record = self.state.dir.join("forwarding");
        let Ok(saved) = std::fs::read_to_string(&record) else {
            return Ok(());
        };
        if self.live_slots()? > 0 {
            return Ok(());
        }
        let values = parse_forwarding_record(&saved).ok_or_else(|| {
            SysError::new(
                format!("restore IP forwarding from {}", record.display()),
                "the record is not as sbx wrote it, so sbx leaves forwarding as it is: set \
                 net.ipv4.ip_forward and net.ipv6.conf.all.forwarding as they should be, then \
                 remove the file",
            )
        })?;
        for (name, value) in values {
            sysctl::write(name, value)?;
        }
        std::fs::remove_file(&record).step(|| format!("remove {}", record.display()))
    }
}

/// The values in a forwarding record, one `name=0|1` line for each of [`FORWARDING_SYSCTLS`];
/// `None` for anything else. The record is only ever written by sbx, into a directory no
/// sandbox sees; one that says otherwise is not trusted with a host-wide setting.
fn parse_forwarding_record(text: &str) -> Option<Vec<(&'static str, &'static str)>> {
    let mut values = Vec::new();
    for line in text.lines() {
        let (name, value) = line.split_once('=')?;
        let name = *FORWARDING_SYSCTLS.iter().find(|n| **n == name)?;
        let value = ["0", "1"].into_iter().find(|v| *v == value)?;
        if values.iter().any(|(n, _)| *n == name) {
            return None;
        }
        values.push((name, value));
    }
    (values.len() == FORWARDING_SYSCTLS.len()).then_some(values)
}

impl Slot {
    /// Gives the slot up: its file goes first, then (on drop) its lock. Called under the global
    /// lock, so no other sbx opens the file in between.
    pub fn release(self, _locked: &Locked<'_>) -> Result<(), SysError> {
        std::fs::remove_file(&self.path).step(|| format!("remove {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_forwarding_record as parse;

    #[test]
    fn only_a_forwarding_record_as_sbx_writes_it_is_trusted() {
        let good = "net.ipv4.ip_forward=0\nnet.ipv6.conf.all.forwarding=1\n";
        assert_eq!(
            parse(good),
            Some(vec![
                ("net.ipv4.ip_forward", "0"),
                ("net.ipv6.conf.all.forwarding", "1")
            ])
        );
        for bad in [
            "",
            "net.ipv4.ip_forward=0\n",
            "net.ipv4.ip_forward=2\nnet.ipv6.conf.all.forwarding=0\n",
            "net.ipv4.ip_forward=0\nnet.ipv4.ip_forward=0\n",
            "kernel.core_pattern=|/x\nnet.ipv4.ip_forward=0\n",
            "net.ipv4.ip_forward=0\nnet.ipv6.conf.all.forwarding=0\njunk\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
