//! Reading and writing sysctls through /proc/sys.

use super::{Step, SysError};

fn path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

pub fn read(name: &str) -> Result<String, SysError> {
    std::fs::read_to_string(path(name))
        .map(|v| v.trim().to_string())
        .step(|| format!("read sysctl {name}"))
}

pub fn write(name: &str, value: &str) -> Result<(), SysError> {
    std::fs::write(path(name), value).step(|| format!("set sysctl {name}={value}"))
}
