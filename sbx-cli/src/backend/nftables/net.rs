//! The sandbox's link to the host: a veth pair, addresses from the slot's subnets, routes both
//! ways. All through rtnetlink (the kernel's interface), none through `ip`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::sys::netns::NetNs;
use crate::sys::{Step, SysError};

/// Address pools, in order of preference. Every sbx takes the first one that overlaps no host
/// route (other than its own sandboxes'), so concurrent sandboxes share one pool.
const POOLS_V4: &[&str] = &["10.207.0.0/16", "10.208.0.0/16", "172.29.0.0/16"];
const POOLS_V6: &[&str] = &["fd5b:5b00::/48", "fd5b:5b01::/48", "fd5b:5b02::/48"];

/// Names and addresses of one sandbox's link, all derived from its slot number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub slot: u32,
    pub host_if: String,
    pub sandbox_if: String,
    pub host_v4: Ipv4Addr,
    pub sandbox_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub sandbox_v6: Ipv6Addr,
}

pub const LINK_PREFIX: &str = "sbx";

impl Layout {
    /// Slot N gets the N-th /30 of the IPv4 pool and the N-th /64 of the IPv6 pool.
    pub fn new(slot: u32, pool_v4: Ipv4Net, pool_v6: Ipv6Net) -> Layout {
        let v4 = u32::from(pool_v4.network()) + slot * 4;
        let v6 = u128::from(pool_v6.network()) + (u128::from(slot) << 64);
        Layout {
            slot,
            host_if: format!("{LINK_PREFIX}{slot}h"),
            sandbox_if: format!("{LINK_PREFIX}{slot}s"),
            host_v4: Ipv4Addr::from(v4 + 1),
            sandbox_v4: Ipv4Addr::from(v4 + 2),
            host_v6: Ipv6Addr::from(v6 + 1),
            sandbox_v6: Ipv6Addr::from(v6 + 2),
        }
    }
}

pub fn host_handle() -> Result<(Handle, tokio::task::JoinHandle<()>), SysError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().step(|| "open a netlink socket".into())?;
    Ok((handle, tokio::spawn(connection)))
}

/// The first pools that overlap no route of the host, leaving out routes through sbx's own links.
pub async fn choose_pools(handle: &Handle) -> Result<(Ipv4Net, Ipv6Net), SysError> {
    let mut taken: Vec<IpNet> = Vec::new();
    let own_links = own_link_indices(handle).await?;
    for family in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut routes = handle.route().get(family).execute();
        while let Some(route) = routes.try_next().await.step(|| "list host routes".into())? {
            if let Some(net) = route_destination(&route)
                && route_link(&route).is_none_or(|l| !own_links.contains(&l))
                && net.prefix_len() > 0
            {
                taken.push(net);
            }
        }
    }
    let free = |candidates: &[&str]| {
        candidates
            .iter()
            .map(|c| c.parse::<IpNet>().expect("valid pool"))
            .find(|pool| {
                !taken
                    .iter()
                    .any(|t| t.contains(&pool.network()) || pool.contains(&t.network()))
            })
    };
    let v4 = free(POOLS_V4).ok_or_else(|| {
        SysError::new(
            "choose the sandbox address pool",
            format!(
                "every candidate ({}) overlaps a host route",
                POOLS_V4.join(", ")
            ),
        )
    })?;
    let v6 = free(POOLS_V6).ok_or_else(|| {
        SysError::new(
            "choose the sandbox address pool",
            format!(
                "every candidate ({}) overlaps a host route",
                POOLS_V6.join(", ")
            ),
        )
    })?;
    match (v4, v6) {
        (IpNet::V4(v4), IpNet::V6(v6)) => Ok((v4, v6)),
        _ => unreachable!("pool lists are per family"),
    }
}

async fn own_link_indices(handle: &Handle) -> Result<Vec<u32>, SysError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = handle.link().get().execute();
    let mut own = Vec::new();
    while let Some(link) = links.try_next().await.step(|| "list links".into())? {
        let is_own = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(name) if is_sbx_link(name)));
        if is_own {
            own.push(link.header.index);
        }
    }
    Ok(own)
}

/// `sbx12h`: a link sbx created for slot 12.
pub fn is_sbx_link(name: &str) -> bool {
    name.strip_prefix(LINK_PREFIX)
        .and_then(|rest| rest.strip_suffix(['h', 's']))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn route_destination(route: &rtnetlink::packet_route::route::RouteMessage) -> Option<IpNet> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
            IpNet::new(IpAddr::V4(*v4), route.header.destination_prefix_length).ok()
        }
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
            IpNet::new(IpAddr::V6(*v6), route.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

fn route_link(route: &rtnetlink::packet_route::route::RouteMessage) -> Option<u32> {
    use rtnetlink::packet_route::route::RouteAttribute;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, SysError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(SysError::new(format!("look up link {name}"), e)),
    }
}

/// Adds an address without duplicate address detection: a fresh /30 or /64 of sbx's own has no
/// one to collide with, and DAD would hold an IPv6 address back for a second or more.
async fn add_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    len: u8,
    link: &str,
) -> Result<(), SysError> {
    let mut request = handle.address().add(index, addr, len);
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    request
        .execute()
        .await
        .step(|| format!("add address {addr}/{len} to {link}"))
}

/// Creates the veth pair with its sandbox end already inside `netns`, and configures both ends.
pub async fn create(handle: &Handle, layout: &Layout, netns: &NetNs) -> Result<(), SysError> {
    let host_if = &layout.host_if;
    let sandbox_if = &layout.sandbox_if;
    // Born in the sandbox's namespace: moving a link between namespaces waits for an RCU grace
    // period (milliseconds), creating it there does not.
    let peer = LinkUnspec::new_with_name(sandbox_if)
        .setns_by_fd(netns.raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_if.clone())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle
        .link()
        .add(veth)
        .execute()
        .await
        .step(|| format!("create the veth pair {host_if}/{sandbox_if}"))?;
    let host_index = link_index(handle, host_if)
        .await?
        .ok_or_else(|| SysError::new(format!("find {host_if}"), "missing after creation"))?;
    add_address(handle, host_index, layout.host_v4.into(), 30, host_if).await?;
    add_address(handle, host_index, layout.host_v6.into(), 64, host_if).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(host_index).up().build())
        .execute()
        .await
        .step(|| format!("bring {host_if} up"))?;

    let inside = layout.clone();
    netns.run(move || configure_inside(&inside))?
}

/// The sandbox end: loopback up, the veth end addressed and up, default routes to the host end.
fn configure_inside(layout: &Layout) -> Result<(), SysError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .step(|| "start a runtime for the sandbox namespace".into())?;
    runtime.block_on(async {
        let (handle, connection) = host_handle()?;
        let if_name = &layout.sandbox_if;
        let lo = link_index(&handle, "lo")
            .await?
            .ok_or_else(|| SysError::new("find lo in the sandbox", "missing"))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .step(|| "bring lo up in the sandbox".into())?;
        let index = link_index(&handle, if_name)
            .await?
            .ok_or_else(|| SysError::new(format!("find {if_name} in the sandbox"), "missing"))?;
        add_address(&handle, index, layout.sandbox_v4.into(), 30, if_name).await?;
        add_address(&handle, index, layout.sandbox_v6.into(), 64, if_name).await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .step(|| format!("bring {if_name} up in the sandbox"))?;
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(layout.host_v4)
                    .output_interface(index)
                    .build(),
            )
            .execute()
            .await
            .step(|| format!("add the IPv4 default route via {}", layout.host_v4))?;
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(layout.host_v6)
                    .output_interface(index)
                    .build(),
            )
            .execute()
            .await
            .step(|| format!("add the IPv6 default route via {}", layout.host_v6))?;
        connection.abort();
        Ok(())
    })
}

/// Removes the host end of a dead sandbox's link, if the kernel has not already (it does when
/// the sandbox namespace goes).
pub async fn remove_host_link(handle: &Handle, name: &str) -> Result<(), SysError> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        // Gone in between: the kernel removed it with its peer's namespace.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        result => result.step(|| format!("remove link {name}")),
    }
}
