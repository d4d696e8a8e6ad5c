//! Events the programs report (denials, and allowed connections when asked), routed to the sbx
//! of their sandbox.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use aya::maps::MapData;

use super::live_cgroup_ids;
use super::pins::pinned_map;
use crate::backend::Kept;
use crate::state::STATE_DIR;
use crate::sys::{Step, SysError};

/// Events reported by the programs, routed to their sandboxes.
///
/// The ring buffer is one map shared by every sandbox, and a ring buffer has one consumer
/// position: two sbx reading it would take each other's events. So whoever drains it does so
/// under a lock, keeps its own sandbox's events and appends the others' to
/// `/run/sbx/events/<cgroup id>`, where their sbx collects them.
pub struct Events {
    cgroup: u64,
    mine: std::sync::Arc<std::sync::Mutex<Kept<EventRecord>>>,
    /// Dropped to stop the drain thread at once (it waits on the other end between drains).
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An `Event` as read back.
#[derive(Clone, Copy)]
pub struct EventRecord(pub sbx_common::Event);

pub(super) fn events_dir() -> PathBuf {
    Path::new(STATE_DIR).join("events")
}

pub(super) fn events_lock() -> Result<nix::fcntl::Flock<File>, SysError> {
    let path = Path::new(STATE_DIR).join("events.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .step(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .step(|| format!("lock {}", path.display()))
}

pub(super) const EVENT_SIZE: usize = std::mem::size_of::<sbx_common::Event>();

/// Drains the ring buffer: `cgroup`'s events into `mine`, the rest into their spool files.
pub(super) fn drain(cgroup: u64, mine: &mut Vec<EventRecord>) -> Result<(), SysError> {
    let _lock = events_lock()?;
    // Opened anew each time, under the lock: aya keeps the consumer position it read at opening,
    // so a handle kept open would read again what another sbx has drained since.
    let map = pinned_map("EVENTS")?;
    let mut ring: aya::maps::RingBuf<MapData> = map.try_into().step(|| "map EVENTS".into())?;
    let mut others: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    while let Some(item) = ring.next() {
        let Some(event) = sbx_common::Event::read(&item) else {
            continue;
        };
        if event.cgroup == cgroup {
            mine.push(EventRecord(event));
        } else {
            others
                .entry(event.cgroup)
                .or_default()
                .extend_from_slice(&item[..EVENT_SIZE]);
        }
    }
    // Only for sandboxes still alive: a killed sbx collects nothing, so nothing waits for it.
    if !others.is_empty() {
        let live = live_cgroup_ids()?;
        others.retain(|id, _| live.contains(id));
    }
    if !others.is_empty() {
        let dir = events_dir();
        std::fs::create_dir_all(&dir).step(|| format!("create {}", dir.display()))?;
        for (other, bytes) in others {
            use std::io::Write as _;
            let path = dir.join(other.to_string());
            let mut file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .step(|| format!("open {}", path.display()))?;
            file.write_all(&bytes)
                .step(|| format!("write {}", path.display()))?;
        }
    }
    // What other sbx drained for this sandbox.
    let spool = events_dir().join(cgroup.to_string());
    if let Ok(bytes) = std::fs::read(&spool) {
        for chunk in bytes.chunks_exact(EVENT_SIZE) {
            mine.extend(sbx_common::Event::read(chunk).map(EventRecord));
        }
        let _ = std::fs::remove_file(&spool);
    }
    // Gone with the last spool file (another sandbox's keeps it: then this fails).
    let _ = std::fs::remove_dir(events_dir());
    Ok(())
}

impl Events {
    /// Drains in the background every 100 ms, so the shared buffer does not fill up.
    pub fn start(cgroup: u64) -> Events {
        let mine = std::sync::Arc::new(std::sync::Mutex::new(Kept::default()));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = {
            let mine = mine.clone();
            std::thread::Builder::new()
                .name("sbx-events".into())
                .spawn(move || {
                    let pause = std::time::Duration::from_millis(100);
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(pause)
                    {
                        let mut batch = Vec::new();
                        let _ = drain(cgroup, &mut batch);
                        mine.lock().expect("not poisoned").extend(batch);
                    }
                })
                .ok()
        };
        Events {
            cgroup,
            mine,
            stop: Some(stop),
            thread,
        }
    }

    /// Every event of the sandbox, once its command has ended.
    pub fn finish(mut self) -> Kept<EventRecord> {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut all = std::mem::take(&mut *self.mine.lock().expect("not poisoned"));
        let mut last = Vec::new();
        let _ = drain(self.cgroup, &mut last);
        all.extend(last);
        all
    }
}
