//! The command's /etc/resolv.conf when sbx's DNS service answers it: the host's file with its
//! name servers replaced by the service. The search list and options stay, so that short names
//! (`curl http://pkg/` with `search corp.example`) and resolver options (`ndots`, `timeout`,
//! `edns0`, `single-request`, ...) behave inside as they do outside; the DNS service judges
//! the names the client asks, search domain included.

use std::net::IpAddr;

/// The host's resolver configuration (`host`, the text of its /etc/resolv.conf) with every
/// `nameserver` line replaced by one naming `server` (port 53: the file cannot say another).
pub fn for_sandbox(host: &str, server: IpAddr, slot: u32) -> String {
    let mut text = format!(
        "# written by sbx for sandbox {slot}: the host's resolv.conf, its name servers replaced\nnameserver {server}\n"
    );
    for line in host.lines() {
        let keyword = line.split_whitespace().next().unwrap_or("");
        // Comments and blank lines carry nothing; `nameserver` is what is replaced.
        if matches!(keyword, "search" | "domain" | "options" | "sortlist") {
            text.push_str(line.trim());
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_servers_are_replaced_and_search_and_options_kept() {
        let host = "# managed by someone\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n\
                    search corp.example lab.example\noptions ndots:2 timeout:1 edns0\n\
                    ; a comment\n\n  options  rotate\n";
        let text = for_sandbox(host, "10.1.2.3".parse().unwrap(), 7);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "nameserver 10.1.2.3",
                "search corp.example lab.example",
                "options ndots:2 timeout:1 edns0",
                "options  rotate",
            ]
        );
    }

    #[test]
    fn an_empty_host_file_gives_the_service_alone() {
        let text = for_sandbox("", "127.83.0.1".parse().unwrap(), 0);
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            ["nameserver 127.83.0.1"]
        );
    }
}
