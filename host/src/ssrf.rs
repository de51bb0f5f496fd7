//! The SSRF guard: which addresses a webhook may not reach, per-application allow-lists, and a
//! DNS resolver for reqwest that refuses forbidden addresses at connect time.
//!
//! [`classify`] is a pure function over an address. [`check_url`] applies it to IP-literal
//! URLs before a request is sent (those never reach a resolver); [`GuardedResolver`] applies it
//! to every address a host name resolves to. A forbidden address is refused unless the
//! application's [`Allowlist`] contains it; nothing is dropped silently: if any resolved address
//! is refused, the connection is refused with an error naming the host, the address and why.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why an address is forbidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForbiddenReason {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT, RFC 6598).
    SharedAddressSpace,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 169.254.169.254, fd00:ec2::254 (instance metadata services).
    CloudMetadata,
    /// fc00::/7.
    UniqueLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// 198.18.0.0/15, 2001:2::/48.
    Benchmarking,
    /// 240.0.0.0/4 and other reserved ranges (192.0.0.0/24, 100::/64 discard, fec0::/10 site-local).
    Reserved,
}

impl ForbiddenReason {
    /// Human description used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ForbiddenReason::Loopback => "loopback",
            ForbiddenReason::Unspecified => "unspecified",
            ForbiddenReason::Private => "private network",
            ForbiddenReason::SharedAddressSpace => "carrier-grade NAT (shared address space)",
            ForbiddenReason::LinkLocal => "link-local",
            ForbiddenReason::CloudMetadata => "cloud metadata service",
            ForbiddenReason::UniqueLocal => "IPv6 unique-local",
            ForbiddenReason::Multicast => "multicast",
            ForbiddenReason::Broadcast => "broadcast",
            ForbiddenReason::Documentation => "documentation range",
            ForbiddenReason::Benchmarking => "benchmarking range",
            ForbiddenReason::Reserved => "reserved range",
        }
    }
}

impl fmt::Display for ForbiddenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `ip` may not be reached, or `None` when it is an ordinary public address. IPv6 forms that
/// embed an IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the embedded address.
pub fn classify(ip: IpAddr) -> Option<ForbiddenReason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<ForbiddenReason> {
    use ForbiddenReason::*;
    let o = ip.octets();
    let reason = match o {
        [169, 254, 169, 254] => CloudMetadata,
        [127, ..] => Loopback,
        [0, ..] => Unspecified,
        [10, ..] => Private,
        [172, b, ..] if (16..32).contains(&b) => Private,
        [192, 168, ..] => Private,
        [100, b, ..] if (64..128).contains(&b) => SharedAddressSpace,
        [169, 254, ..] => LinkLocal,
        [255, 255, 255, 255] => Broadcast,
        [a, ..] if (224..240).contains(&a) => Multicast,
        [a, ..] if a >= 240 => Reserved,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => Documentation,
        [198, b, ..] if b == 18 || b == 19 => Benchmarking,
        [192, 0, 0, _] => Reserved,
        _ => return None,
    };
    Some(reason)
}

/// The AWS IMDS IPv6 address.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn classify_v6(ip: Ipv6Addr) -> Option<ForbiddenReason> {
    use ForbiddenReason::*;
    if ip == METADATA_V6 {
        return Some(CloudMetadata);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    let s = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but still parsed by stacks).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return classify_v4(embedded(s[6], s[7])).or(if s[5] == 0 { Some(Reserved) } else { None });
    }
    // NAT64 well-known prefix 64:ff9b::/96 (and the local-use 64:ff9b:1::/48).
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        return classify_v4(embedded(s[6], s[7]));
    }
    // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return classify_v4(embedded(s[1], s[2]));
    }
    let reason = match s[0] {
        x if x & 0xfe00 == 0xfc00 => UniqueLocal,
        x if x & 0xffc0 == 0xfe80 => LinkLocal,
        x if x & 0xffc0 == 0xfec0 => Reserved,
        x if x & 0xff00 == 0xff00 => Multicast,
        0x2001 if s[1] == 0x0db8 => Documentation,
        0x2001 if s[1] == 0x0002 && s[2] == 0 => Benchmarking,
        0x0100 if s[1..4] == [0; 3] => Reserved,
        _ => return None,
    };
    Some(reason)
}

/// An IP network in CIDR notation: `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part does not parse.
    #[error("{0:?} is not an IP address or CIDR network (examples: 10.0.0.0/8, ::1/128)")]
    BadAddress(String),
    /// The prefix length is not a number in range.
    #[error("{input:?}: prefix length must be 0-{max}")]
    BadPrefix {
        /// The input.
        input: String,
        /// 32 or 128.
        max: u8,
    },
    /// Bits set after the prefix (`10.0.0.1/8`): probably a typo.
    #[error(
        "{input:?}: address has bits set beyond the /{prefix} prefix (did you mean {canonical}?)"
    )]
    HostBitsSet {
        /// The input.
        input: String,
        /// The prefix length.
        prefix: u8,
        /// The network it probably means.
        canonical: String,
    },
}

impl Cidr {
    /// Parse `addr/prefix` or a bare address.
    pub fn parse(input: &str) -> Result<Cidr, CidrError> {
        let text = input.trim();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr =
            IpAddr::from_str(addr_text).map_err(|_| CidrError::BadAddress(input.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(CidrError::BadPrefix {
                        input: input.to_string(),
                        max,
                    });
                }
            },
        };
        let cidr = Cidr { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(CidrError::HostBitsSet {
                input: input.to_string(),
                prefix,
                canonical: format!("{network}/{prefix}"),
            });
        }
        Ok(cidr)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    /// True when `ip` is inside this network. An IPv4 network also contains the IPv4-mapped
    /// IPv6 form of its addresses (`::ffff:127.0.0.1` is in `127.0.0.0/8`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        Cidr::parse(s)
    }
}

/// Networks one application may reach although the guard forbids them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Allowlist {
    networks: Vec<Cidr>,
}

impl Allowlist {
    /// An allow-list of these networks.
    pub fn new(networks: Vec<Cidr>) -> Allowlist {
        let mut networks = networks;
        networks.sort_by_key(|c| (c.addr, c.prefix));
        networks.dedup();
        Allowlist { networks }
    }

    /// Parse a list of CIDR strings; the error carries the index of the bad entry.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Allowlist, (usize, CidrError)> {
        let networks = items
            .iter()
            .enumerate()
            .map(|(i, s)| Cidr::parse(s.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowlist::new(networks))
    }

    /// True when some network of the list contains `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// The networks, sorted.
    pub fn networks(&self) -> &[Cidr] {
        &self.networks
    }

    /// True when the list is empty (the guard applies in full).
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Why `ip` is refused under this allow-list, or `None` if it may be reached.
    pub fn check(&self, ip: IpAddr) -> Option<ForbiddenReason> {
        classify(ip).filter(|_| !self.allows(ip))
    }
}
