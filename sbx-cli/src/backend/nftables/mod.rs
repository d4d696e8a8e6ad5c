//! The nftables backend: a network namespace per sandbox, a veth pair to the host, NAT, and the
//! policy in an nftables table on the host side, out of the command's reach.

mod elements;
mod log;
pub mod net;
pub mod ruleset;

use std::net::SocketAddr;

use ipnet::IpNet;

use super::{Admit, Backend, Enforced, Observe, Placement};
use crate::plan::Plan;
use crate::policy::Mode;
use crate::state::Locked;
use crate::sys::netns::NetNs;
use crate::sys::{Step, SysError};
use net::Layout;
use ruleset::Ruleset;

pub struct Nftables;

struct Live {
    netns: NetNs,
    allowlist: bool,
    /// Whether sbx's DNS service serves the sandbox (`ruleset::serves_dns`).
    serves_dns: bool,
    /// The logged packets, read from the table's NFLOG group (`None` in mode `none`).
    log: Option<log::EventLog>,
    /// `None` in mode `none`: the namespace has no link at all.
    layout: Option<Layout>,
    table: Option<String>,
}

fn runtime() -> Result<tokio::runtime::Runtime, SysError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .step(|| "start the netlink runtime".into())
}

fn nft(
    json: &nftables::schema::Nftables<'_>,
    what: impl FnOnce() -> String,
) -> Result<(), SysError> {
    nftables::helper::apply_ruleset(json).map_err(|e| SysError::new(what(), e))
}

fn is_loopback(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.network().is_loopback(),
        IpNet::V6(n) => n.network().is_loopback(),
    }
}

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn refusals(&self, plan: &Plan) -> Vec<String> {
        let mut refusals = Vec::new();
        if plan.mode == Mode::Allowlist {
            // The host's 127.0.0.1 is reachable (see `ruleset::inside`); its other loopback
            // addresses and ::1 are not, from another network namespace. `localhost` resolves
            // to ::1 as well: that half stays the sandbox's own loopback.
            let localhost: IpNet = "127.0.0.1/32".parse().expect("valid");
            for set in &plan.allow {
                for source in &set.sources {
                    let is_localhost_name = source
                        .name
                        .as_deref()
                        .is_some_and(|n| n == "localhost" || n.ends_with(".localhost"));
                    let unreachable = source.addresses.iter().filter(|n| is_loopback(n)).any(|n| {
                        *n != localhost && !(is_localhost_name && matches!(n, IpNet::V6(_)))
                    });
                    if unreachable {
                        refusals.push(format!(
                            "`{}` ({}) names a loopback address of the host other than \
                             127.0.0.1; from the sandbox's network namespace the nftables backend \
                             reaches only the host's 127.0.0.1 (use it, or --backend ebpf)",
                            source.entry, source.origin
                        ));
                    }
                }
            }
        }
        refusals
    }

    fn describe(&self, plan: &Plan) -> String {
        if plan.mode == Mode::None {
            return "a new network namespace with only its loopback; no link, no rules\n".into();
        }
        let layout = Layout::new(
            0,
            "10.207.0.0/16".parse().unwrap(),
            "fd5b:5b00::/48".parse().unwrap(),
        );
        let ruleset = Ruleset::build(plan, &Observe::default(), &layout);
        let json = serde_json::to_string_pretty(&ruleset.to_json()).expect("serialisable");
        format!(
            "a new network namespace, linked to the host by a veth pair\n\
             (shown for slot 0; a run takes the first free slot N: links sbxNh/sbxNs, table sbx_N)\n\
             host end:    {} {}/30 {}/64\n\
             sandbox end: {} {}/30 {}/64, default routes via the host end\n\
             NAT: the sandbox leaves as the host (masquerade); IP forwarding on while a sandbox runs\n\
             DNS: {}\n\
             nftables ruleset (nft -j), applied in one transaction:\n{json}\n",
            layout.host_if,
            layout.host_v4,
            layout.host_v6,
            layout.sandbox_if,
            layout.sandbox_v4,
            layout.sandbox_v6,
            if plan.mode == Mode::Allowlist {
                format!(
                    "the command's resolv.conf names sbx's service at {}:53; every other DNS packet goes there too",
                    layout.host_v4
                )
            } else {
                "the host's resolv.conf, unchanged".into()
            },
        )
    }

    fn setup(
        &self,
        plan: &Plan,
        observe: &Observe,
        slot: u32,
        locked: &Locked<'_>,
    ) -> Result<Box<dyn Enforced>, SysError> {
        let netns = NetNs::new()?;
        // In audit, mode none gets a link too: what it would refuse (everything) is let through
        // and reported, as the eBPF backend does.
        if plan.mode == Mode::None && !observe.audit {
            // Loopback only: bring `lo` up inside, nothing on the host side.
            netns.run(|| -> Result<(), SysError> {
                runtime()?.block_on(async {
                    let (handle, connection) = net::host_handle()?;
                    let result = bring_lo_up(&handle).await;
                    connection.abort();
                    result
                })
            })??;
            return Ok(Box::new(Live {
                netns,
                allowlist: false,
                serves_dns: false,
                log: None,
                layout: None,
                table: None,
            }));
        }
        let rt = runtime()?;
        let (handle, connection) = rt.block_on(async { net::host_handle() })?;
        let layout = match rt.block_on(net::choose_pools(&handle)) {
            Ok((v4, v6)) => Layout::new(slot, v4, v6),
            Err(e) => {
                connection.abort();
                return Err(e);
            }
        };
        let ruleset = Ruleset::build(plan, observe, &layout);
        let json = ruleset.structure();
        // The ruleset names the link, it does not need it to exist: both go in at once.
        let (linked, applied, log) = std::thread::scope(|scope| {
            let applying = scope.spawn(|| {
                nft(&json, || {
                    format!("apply nftables table {}", ruleset.table())
                })?;
                for set in ruleset.elements() {
                    elements::add(ruleset.table(), set)?;
                }
                Ok(())
            });
            let logging = scope.spawn(|| log::EventLog::start(log::group(slot)));
            let linked = rt.block_on(net::create(&handle, &layout, &netns));
            (
                linked,
                applying.join().expect("nft thread does not panic"),
                logging.join().expect("log thread does not panic"),
            )
        });
        connection.abort();
        let local = match (&linked, &applied, ruleset::inside(plan, &layout)) {
            (Ok(()), Ok(()), Some(inside)) => reach_host_loopback(&netns, &layout, &inside),
            _ => Ok(()),
        };
        let (log, logging) = match log {
            Ok(log) => (Some(log), Ok(())),
            Err(e) => (None, Err(e)),
        };
        let live = Live {
            netns,
            allowlist: plan.mode == Mode::Allowlist,
            serves_dns: ruleset::serves_dns(plan, observe),
            log,
            layout: Some(layout),
            table: applied.is_ok().then(|| ruleset.table().to_string()),
        };
        if let Err(e) = linked
            .and(applied)
            .and(logging)
            .and(local)
            .and_then(|()| locked.enable_forwarding())
        {
            let _ = Box::new(live).teardown(locked);
            return Err(e);
        }
        Ok(Box::new(live))
    }

    fn clean_dead_slot(&self, slot: u32) -> Result<(), SysError> {
        let table = ruleset::table_name(slot);
        if table_exists(&table)? {
            nft(&ruleset::delete_table(&table), || {
                format!("remove nftables table {table}")
            })?;
        }
        runtime()?.block_on(async {
            let (handle, connection) = net::host_handle()?;
            let result =
                net::remove_host_link(&handle, &format!("{}{slot}h", net::LINK_PREFIX)).await;
            connection.abort();
            result
        })
    }
}

async fn bring_lo_up(handle: &rtnetlink::Handle) -> Result<(), SysError> {
    use futures_util::TryStreamExt;
    let lo = handle
        .link()
        .get()
        .match_name("lo".to_string())
        .execute()
        .try_next()
        .await
        .step(|| "find lo in the sandbox".into())?
        .ok_or_else(|| SysError::new("find lo in the sandbox", "missing"))?;
    handle
        .link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(lo.header.index)
                .up()
                .build(),
        )
        .execute()
        .await
        .step(|| "bring lo up in the sandbox".into())
}

fn table_exists(table: &str) -> Result<bool, SysError> {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .step(|| "run nft".into())?;
    Ok(out.success())
}

impl Enforced for Live {
    fn events(&mut self) -> crate::backend::Kept<crate::backend::Event> {
        self.log
            .take()
            .map(log::EventLog::finish)
            .unwrap_or_default()
    }

    fn placement(&self) -> Placement<'_> {
        Placement {
            netns: Some(self.netns.as_fd()),
            cgroup: None,
        }
    }

    fn dns_listen_address(&self) -> Option<SocketAddr> {
        self.layout
            .as_ref()
            .filter(|_| self.serves_dns)
            .map(|l| SocketAddr::from((l.host_v4, 53)))
    }

    fn admitter(&self) -> Option<std::sync::Arc<dyn Admit>> {
        let table = self.table.clone()?;
        self.allowlist
            .then(|| std::sync::Arc::new(Admitter { table }) as std::sync::Arc<dyn Admit>)
    }

    fn dns_bound(&mut self, _at: SocketAddr) -> Result<(), SysError> {
        // The ruleset already sends every DNS packet to the host end of the link, port 53.
        Ok(())
    }

    fn teardown(self: Box<Self>, _locked: &Locked<'_>) -> Result<(), SysError> {
        let Live {
            netns,
            layout,
            table,
            ..
        } = *self;
        // The link to the host is removed here, so that when sbx exits no link of it is left,
        // at the same time as the table: each removal waits for the kernel, and the two waits
        // overlap. The namespace, then empty, goes with its last holder (the kernel removes it
        // in the background; it has no name, so nothing of it shows).
        let removed = std::thread::scope(|scope| {
            let table_removed = table.map(|table| {
                scope.spawn(move || {
                    nft(&ruleset::delete_table(&table), || {
                        format!("remove nftables table {table}")
                    })
                })
            });
            let link_removed = match layout {
                Some(layout) => runtime().and_then(|rt| {
                    rt.block_on(async {
                        let (handle, connection) = net::host_handle()?;
                        let result = net::remove_host_link(&handle, &layout.host_if).await;
                        connection.abort();
                        result
                    })
                }),
                None => Ok(()),
            };
            let table_removed = table_removed
                .map(|t| t.join().expect("nft thread does not panic"))
                .unwrap_or(Ok(()));
            table_removed.and(link_removed)
        });
        drop(netns);
        removed
    }
}

/// Admits answered addresses into the table's timeout sets (see `Ruleset::answered_sets`).
struct Admitter {
    table: String,
}

impl Admit for Admitter {
    fn admit(
        &self,
        groups: &[usize],
        addrs: &[std::net::IpAddr],
        ttl: std::time::Duration,
    ) -> Result<(), SysError> {
        let (v6, v4): (Vec<_>, Vec<_>) = addrs.iter().copied().partition(|a| a.is_ipv6());
        for &group in groups {
            for (family, is_v6) in [(&v4, false), (&v6, true)] {
                let set = ruleset::answered_set(group, is_v6);
                elements::add_timed(&self.table, &set, family, ttl)?;
            }
        }
        Ok(())
    }
}

/// Routes the policy's host loopback services (`ruleset::inside`): the small nat table inside
/// the sandbox, and `route_localnet` on the two ends of sbx's own link, so that packets to and
/// from 127.0.0.1 may cross it. No host-wide setting changes.
fn reach_host_loopback(
    netns: &NetNs,
    layout: &Layout,
    inside: &nftables::schema::Nftables<'static>,
) -> Result<(), SysError> {
    crate::sys::sysctl::write(
        &format!("net.ipv4.conf.{}.route_localnet", layout.host_if),
        "1",
    )?;
    let sandbox_if = layout.sandbox_if.clone();
    netns.run(move || {
        crate::sys::sysctl::write(&format!("net.ipv4.conf.{sandbox_if}.route_localnet"), "1")?;
        nft(inside, || {
            "apply the sandbox's loopback routing table".into()
        })
    })?
}
