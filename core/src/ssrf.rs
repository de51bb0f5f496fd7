//! The SSRF guard's decisions: which addresses a webhook may not reach, and per-application
//! allow-lists.
//!
//! [`classify`] is a pure function over an address. [`check_url`] applies it to IP-literal
//! URLs before a request is sent (those never reach a resolver); the engine's resolver
//! (`squall::ssrf::GuardedResolver`) applies [`check_addrs`] to every address a host name
//! resolves to. A forbidden address is refused unless the
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(ipnet::IpNet);

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
        let bad_prefix = || CidrError::BadPrefix {
            input: input.to_string(),
            max,
        };
        let prefix = match prefix_text {
            None => max,
            Some(p) if p.starts_with('+') => return Err(bad_prefix()),
            Some(p) => p.parse::<u8>().map_err(|_| bad_prefix())?,
        };
        let net = ipnet::IpNet::new(addr, prefix).map_err(|_| bad_prefix())?;
        if net.network() != addr {
            return Err(CidrError::HostBitsSet {
                input: input.to_string(),
                prefix,
                canonical: net.trunc().to_string(),
            });
        }
        Ok(Cidr(net))
    }

    /// True when `ip` is inside this network. An IPv4 network also contains the IPv4-mapped
    /// IPv6 form of its addresses (`::ffff:127.0.0.1` is in `127.0.0.0/8`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.0, ip) {
            (ipnet::IpNet::V4(net), IpAddr::V6(v6)) => {
                v6.to_ipv4_mapped().is_some_and(|v4| net.contains(&v4))
            }
            (net, ip) => net.contains(&ip),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
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
        networks.sort_by_key(|c| (c.0.addr(), c.0.prefix_len()));
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

/// A refusal by the guard, or a failed lookup. Messages name the host and address, never
/// anything from the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The address is forbidden and not in the application's allow-list.
    #[error(
        "{}{addr} is a forbidden address ({reason}): refused by the SSRF guard (allow it per application with allowed_networks)",
        if *host == addr.to_string() { String::new() } else { format!("{host} resolves to {addr}; ") }
    )]
    Forbidden {
        /// Host as written in the URL.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// Why.
        reason: ForbiddenReason,
    },
    /// The name did not resolve.
    #[error("cannot resolve {host}: {message}")]
    Dns {
        /// Host name.
        host: String,
        /// Resolver message.
        message: String,
    },
}

/// Check resolved addresses: all must be allowed; the first refused one is reported.
pub fn check_addrs(host: &str, addrs: &[IpAddr], allow: &Allowlist) -> Result<(), SsrfError> {
    if addrs.is_empty() {
        return Err(SsrfError::Dns {
            host: host.to_string(),
            message: "no addresses".to_string(),
        });
    }
    for &addr in addrs {
        if let Some(reason) = allow.check(addr) {
            return Err(SsrfError::Forbidden {
                host: host.to_string(),
                addr,
                reason,
            });
        }
    }
    Ok(())
}

/// The address a localhost name stands for (see [`is_localhost_name`]).
pub const LOCALHOST_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// True for `localhost` and `*.localhost`, with or without the root dot, in any case.
/// RFC 6761 section 6.3 makes these names loopback by definition, but resolvers disagree on
/// them (glibc answers `localhost` from /etc/hosts and sends `localhost.` to DNS, where it
/// may fail or, on some networks, resolve), so the guard does not ask a resolver: it treats
/// them as [`LOCALHOST_ADDR`].
pub fn is_localhost_name(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host).as_bytes();
    const SUFFIX: &[u8] = b".localhost";
    h.eq_ignore_ascii_case(b"localhost")
        || (h.len() > SUFFIX.len() && h[h.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
}

/// Check a URL whose host is an IP literal or a localhost name (these never reach a
/// resolver). The `url` crate has already normalised decimal, octal and hex IPv4 spellings
/// (`http://2130706433/`, `http://0x7f.1/`) to dotted form. Other host names pass here and
/// are checked by the resolver.
pub fn check_url(url: &url::Url, allow: &Allowlist) -> Result<(), SsrfError> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(d)) if is_localhost_name(d) => {
            return check_addrs(d, &[LOCALHOST_ADDR], allow);
        }
        _ => return Ok(()),
    };
    check_addrs(&ip.to_string(), &[ip], allow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ForbiddenReason::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classification_table() {
        let cases: &[(&str, Option<ForbiddenReason>)] = &[
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("172.15.255.255", None),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("100.128.0.1", None),
            ("169.254.1.1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::8.8.8.8", Some(Reserved)),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("64:ff9b::808:808", None),
            ("2002:c0a8:0101::1", Some(Private)),
            ("2002:7f00:0001::", Some(Loopback)),
            ("2002:0808:0808::1", None),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.2.10", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.99", Some(Documentation)),
            ("2001:db8::1", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("2001:2::1", Some(Benchmarking)),
            ("192.0.0.8", Some(Reserved)),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.215.14", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:82a::200e", None),
        ];
        for (s, want) in cases {
            assert_eq!(classify(ip(s)), *want, "{s}");
        }
    }

    /// IP literals in URLs, in every spelling the `url` crate normalises, are checked before
    /// sending; host names pass to the resolver.
    #[test]
    fn url_literals_in_odd_spellings() {
        let none = Allowlist::default();
        let cases: &[(&str, Option<ForbiddenReason>)] = &[
            ("http://127.0.0.1/", Some(Loopback)),
            ("http://2130706433/", Some(Loopback)),
            ("http://0x7f.1/", Some(Loopback)),
            ("http://0177.0.0.1/", Some(Loopback)),
            ("http://0x7f000001/", Some(Loopback)),
            ("http://127.1/", Some(Loopback)),
            ("http://0/", Some(Unspecified)),
            ("http://[::1]:8080/x", Some(Loopback)),
            ("http://[::ffff:127.0.0.1]/", Some(Loopback)),
            ("http://[::ffff:7f00:1]/", Some(Loopback)),
            (
                "http://[0:0:0:0:0:ffff:a9fe:a9fe]/latest/meta-data",
                Some(CloudMetadata),
            ),
            (
                "http://169.254.169.254/latest/meta-data/",
                Some(CloudMetadata),
            ),
            ("http://0xa9.0xfe.0xa9.0xfe/", Some(CloudMetadata)),
            ("http://2852039166/", Some(CloudMetadata)),
            ("https://[fd00:ec2::254]/", Some(CloudMetadata)),
            ("http://012.0.0.1/", Some(Private)),
            ("http://[fe80::1%25eth0]/", None),
            ("http://8.8.8.8/", None),
            ("https://hooks.example.com/", None),
            ("http://localhost/", Some(Loopback)),
            ("http://localhost./", Some(Loopback)),
            ("http://LocalHost:8080/", Some(Loopback)),
            ("http://api.localhost/", Some(Loopback)),
            ("http://api.localhost./x", Some(Loopback)),
            ("http://localhost.example.com/", None),
            ("http://notlocalhost/", None),
        ];
        for (u, want) in cases {
            let parsed = match url::Url::parse(u) {
                Ok(p) => p,
                // Zone ids are not valid in URLs: the url crate refuses them outright.
                Err(_) => {
                    assert!(u.contains("%25"), "{u} should parse");
                    continue;
                }
            };
            let got = match check_url(&parsed, &none) {
                Ok(()) => None,
                Err(SsrfError::Forbidden { reason, .. }) => Some(reason),
                Err(e) => panic!("{u}: {e}"),
            };
            assert_eq!(got, *want, "{u} -> {parsed}");
        }
    }

    #[test]
    fn cidr_parsing_and_allowlists() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains(ip("127.9.9.9")));
        assert!(c.contains(ip("::ffff:127.0.0.1")));
        assert!(!c.contains(ip("128.0.0.1")));
        assert!(!c.contains(ip("::1")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("fc00::/7").unwrap().contains(ip("fd00::5")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(Cidr::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert!(matches!(
            Cidr::parse("10.0.0.0/33"),
            Err(CidrError::BadPrefix { max: 32, .. })
        ));
        assert!(matches!(
            Cidr::parse("::/129"),
            Err(CidrError::BadPrefix { max: 128, .. })
        ));
        assert!(matches!(
            Cidr::parse("10.0.0.0/+8"),
            Err(CidrError::BadPrefix { .. })
        ));
        assert!(matches!(
            Cidr::parse("10.0.0.0/"),
            Err(CidrError::BadPrefix { .. })
        ));
        assert!(matches!(
            Cidr::parse("localhost"),
            Err(CidrError::BadAddress(_))
        ));
        let e = Cidr::parse("192.168.1.1/16").unwrap_err().to_string();
        assert!(e.contains("did you mean 192.168.0.0/16"), "{e}");

        let allow = Allowlist::parse(&["127.0.0.0/8", "::1/128"]).unwrap();
        assert_eq!(allow.check(ip("127.0.0.1")), None);
        assert_eq!(allow.check(ip("::1")), None);
        assert_eq!(allow.check(ip("10.0.0.1")), Some(Private));
        assert_eq!(allow.check(ip("169.254.169.254")), Some(CloudMetadata));
        assert_eq!(Allowlist::parse(&["1.2.3.0/24", "x"]).unwrap_err().0, 1);
        // Order and duplicates do not make two lists different (they key shared clients).
        assert_eq!(
            Allowlist::parse(&["::1/128", "127.0.0.0/8", "::1"]).unwrap(),
            allow
        );
    }

    #[test]
    fn refusals_name_host_address_and_reason() {
        let e = check_addrs(
            "hooks.internal",
            &[ip("93.184.215.14"), ip("10.0.0.5")],
            &Allowlist::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "hooks.internal resolves to 10.0.0.5; 10.0.0.5 is a forbidden address (private network): refused by the SSRF guard (allow it per application with allowed_networks)"
        );
        let e = check_url(
            &url::Url::parse("http://0x7f.1/").unwrap(),
            &Allowlist::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("127.0.0.1 is a forbidden address (loopback)"),
            "{e}"
        );
        assert!(matches!(
            check_addrs("x", &[], &Allowlist::default()),
            Err(SsrfError::Dns { .. })
        ));
    }
}
