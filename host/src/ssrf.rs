//! The SSRF guard at connect time: a DNS resolver for reqwest that refuses forbidden addresses.
//! The decisions (address classes, allow-lists, IP-literal URLs) are `squall_core::ssrf`,
//! re-exported here.

use std::net::IpAddr;

pub use squall_core::ssrf::*;

/// A reqwest DNS resolver that resolves with tokio and refuses forbidden addresses.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    allow: std::sync::Arc<Allowlist>,
}

impl GuardedResolver {
    /// A resolver applying this allow-list.
    pub fn new(allow: Allowlist) -> GuardedResolver {
        GuardedResolver {
            allow: std::sync::Arc::new(allow),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            if is_localhost_name(&host) {
                check_addrs(&host, &[LOCALHOST_ADDR], &allow)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                let addr = std::net::SocketAddr::new(LOCALHOST_ADDR, 0);
                return Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs);
            }
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| {
                    Box::new(SsrfError::Dns {
                        host: host.clone(),
                        message: e.to_string(),
                    }) as Box<dyn std::error::Error + Send + Sync>
                })?
                .collect();
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            check_addrs(&host, &ips, &allow)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use ForbiddenReason::*;

    #[tokio::test]
    async fn resolver_refuses_localhost_unless_allowed() {
        use reqwest::dns::Resolve;
        let name = |s: &str| reqwest::dns::Name::from_str(s).unwrap();
        let err = GuardedResolver::default()
            .resolve(name("localhost"))
            .await
            .err()
            .expect("localhost must be refused");
        let ssrf = err.downcast_ref::<SsrfError>().expect("typed error");
        assert!(
            matches!(
                ssrf,
                SsrfError::Forbidden {
                    reason: Loopback,
                    ..
                }
            ),
            "{ssrf}"
        );
        assert!(ssrf.to_string().contains("localhost resolves to"), "{ssrf}");

        let allowed = GuardedResolver::new(Allowlist::parse(&["127.0.0.0/8", "::1/128"]).unwrap());
        let addrs: Vec<_> = allowed.resolve(name("localhost")).await.unwrap().collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));

        // The dotted form is loopback too, whatever the system resolver makes of it (glibc
        // sends `localhost.` to DNS): refused without the allow-list, 127.0.0.1 with it.
        for n in ["localhost.", "svc.localhost", "svc.localhost."] {
            let err = GuardedResolver::default()
                .resolve(name(n))
                .await
                .err()
                .unwrap_or_else(|| panic!("{n} must be refused"));
            let ssrf = err.downcast_ref::<SsrfError>().expect("typed error");
            assert_eq!(
                ssrf.to_string(),
                format!(
                    "{n} resolves to 127.0.0.1; 127.0.0.1 is a forbidden address (loopback): refused by the SSRF guard (allow it per application with allowed_networks)"
                )
            );
            let addrs: Vec<_> = allowed.resolve(name(n)).await.unwrap().collect();
            assert_eq!(addrs, vec!["127.0.0.1:0".parse().unwrap()], "{n}");
        }

        let err = GuardedResolver::default()
            .resolve(name("no-such-host.invalid"))
            .await
            .err()
            .unwrap();
        assert!(matches!(
            err.downcast_ref::<SsrfError>(),
            Some(SsrfError::Dns { .. })
        ));
    }
}
