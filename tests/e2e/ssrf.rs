//! The SSRF table through the real `squall run`: every forbidden destination, in every
//! spelling, is dead-lettered with a reason naming the address and why, and nothing reaches
//! it; the same table under an allow-list for loopback delivers exactly the loopback rows;
//! a redirect from an allowed receiver is never followed.
//!
//! SAFETY: traffic may only go to loopback. Before an event is sent through the engine, the
//! pure classifier (`squall::ssrf::check_url`, the check the deliverer runs before any
//! connection) must refuse its URL under that application's allow-list, unless the row is a
//! loopback row expected to deliver; so a broken guard fails here, before a packet could
//! leave the machine.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use squall::ssrf::{self, Allowlist, SsrfError};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::{TEST_SECRET, config_toml, sqs_or_skip};

const SETTLE: Duration = Duration::from_secs(90);

/// Where a row points: the IPv4 receiver's port, the IPv6 receiver's port, or a port on
/// another machine (never contacted: the guard must refuse it first).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Port {
    Rx4,
    Rx6,
    Remote,
}

/// One destination.
struct Row {
    /// What the row proves.
    case: &'static str,
    /// The URL with `{port}` where the port goes.
    url: &'static str,
    port: Port,
    /// The host the refusal names (`localhost.`), when it is not the address itself.
    host: Option<&'static str>,
    /// The address the refusal names.
    addr: &'static str,
    /// `ForbiddenReason::as_str` of the refusal.
    reason: &'static str,
    /// Delivered when the application allows 127.0.0.0/8 and ::1/128.
    delivers_when_loopback_allowed: bool,
}

const fn row(
    case: &'static str,
    url: &'static str,
    port: Port,
    addr: &'static str,
    reason: &'static str,
    delivers: bool,
) -> Row {
    Row {
        case,
        url,
        port,
        host: None,
        addr,
        reason,
        delivers_when_loopback_allowed: delivers,
    }
}

fn table() -> Vec<Row> {
    use Port::*;
    let mut rows = vec![
        row(
            "IPv4 loopback",
            "http://127.0.0.1:{port}/",
            Rx4,
            "127.0.0.1",
            "loopback",
            true,
        ),
        row(
            "IPv6 loopback",
            "http://[::1]:{port}/",
            Rx6,
            "::1",
            "loopback",
            true,
        ),
        row(
            "IPv4 unspecified (reaches this host on Linux)",
            "http://0.0.0.0:{port}/",
            Rx4,
            "0.0.0.0",
            "unspecified",
            false,
        ),
        row(
            "IPv4 unspecified, spelled 0",
            "http://0:{port}/",
            Rx4,
            "0.0.0.0",
            "unspecified",
            false,
        ),
        row(
            "IPv6 unspecified",
            "http://[::]:{port}/",
            Rx6,
            "::",
            "unspecified",
            false,
        ),
        row(
            "private 10/8",
            "http://10.0.0.1:{port}/",
            Remote,
            "10.0.0.1",
            "private network",
            false,
        ),
        row(
            "private 172.16/12",
            "http://172.16.5.4:{port}/",
            Remote,
            "172.16.5.4",
            "private network",
            false,
        ),
        row(
            "private 192.168/16",
            "http://192.168.1.1:{port}/",
            Remote,
            "192.168.1.1",
            "private network",
            false,
        ),
        row(
            "carrier-grade NAT 100.64/10",
            "http://100.64.0.1:{port}/",
            Remote,
            "100.64.0.1",
            "carrier-grade NAT (shared address space)",
            false,
        ),
        row(
            "IPv4 link-local",
            "http://169.254.1.1:{port}/",
            Remote,
            "169.254.1.1",
            "link-local",
            false,
        ),
        row(
            "IPv6 link-local",
            "http://[fe80::1]:{port}/",
            Remote,
            "fe80::1",
            "link-local",
            false,
        ),
        row(
            "IPv6 unique-local",
            "http://[fd12:3456::1]:{port}/",
            Remote,
            "fd12:3456::1",
            "IPv6 unique-local",
            false,
        ),
        row(
            "metadata 169.254.169.254",
            "http://169.254.169.254/latest/meta-data/",
            Remote,
            "169.254.169.254",
            "cloud metadata service",
            false,
        ),
        row(
            "metadata fd00:ec2::254",
            "http://[fd00:ec2::254]/latest/meta-data/",
            Remote,
            "fd00:ec2::254",
            "cloud metadata service",
            false,
        ),
        row(
            "metadata, decimal spelling",
            "http://2852039166/latest/meta-data/",
            Remote,
            "169.254.169.254",
            "cloud metadata service",
            false,
        ),
        row(
            "metadata, hex spelling",
            "http://0xa9.0xfe.0xa9.0xfe/",
            Remote,
            "169.254.169.254",
            "cloud metadata service",
            false,
        ),
        row(
            "IPv4-mapped IPv6 loopback",
            "http://[::ffff:127.0.0.1]:{port}/",
            Rx4,
            "::ffff:127.0.0.1",
            "loopback",
            true,
        ),
        row(
            "IPv4-mapped IPv6 metadata",
            "http://[::ffff:169.254.169.254]/",
            Remote,
            "::ffff:169.254.169.254",
            "cloud metadata service",
            false,
        ),
        row(
            "IPv4-mapped IPv6 private",
            "http://[::ffff:10.0.0.1]:{port}/",
            Remote,
            "::ffff:10.0.0.1",
            "private network",
            false,
        ),
        row(
            "NAT64 64:ff9b::/96 loopback",
            "http://[64:ff9b::7f00:1]:{port}/",
            Remote,
            "64:ff9b::7f00:1",
            "loopback",
            false,
        ),
        row(
            "6to4 2002::/16 private",
            "http://[2002:c0a8:101::1]:{port}/",
            Remote,
            "2002:c0a8:101::1",
            "private network",
            false,
        ),
        row(
            "decimal IPv4 2130706433",
            "http://2130706433:{port}/",
            Rx4,
            "127.0.0.1",
            "loopback",
            true,
        ),
        row(
            "octal IPv4 0177.0.0.1",
            "http://0177.0.0.1:{port}/",
            Rx4,
            "127.0.0.1",
            "loopback",
            true,
        ),
        row(
            "hex IPv4 0x7f.0.0.1",
            "http://0x7f.0.0.1:{port}/",
            Rx4,
            "127.0.0.1",
            "loopback",
            true,
        ),
        row(
            "hex IPv4 0x7f000001",
            "http://0x7f000001:{port}/",
            Rx4,
            "127.0.0.1",
            "loopback",
            true,
        ),
        row(
            "short IPv4 127.1",
            "http://127.1:{port}/",
            Rx4,
            "127.0.0.1",
            "loopback",
            true,
        ),
        row(
            "octal private 012.0.0.1",
            "http://012.0.0.1:{port}/",
            Remote,
            "10.0.0.1",
            "private network",
            false,
        ),
        row(
            "multicast",
            "http://224.0.0.1:{port}/",
            Remote,
            "224.0.0.1",
            "multicast",
            false,
        ),
        row(
            "broadcast",
            "http://255.255.255.255:{port}/",
            Remote,
            "255.255.255.255",
            "broadcast",
            false,
        ),
    ];
    for (case, url, host) in [
        (
            "DNS name localhost",
            "http://localhost:{port}/",
            "localhost",
        ),
        (
            "DNS name localhost. (root dot)",
            "http://localhost.:{port}/",
            "localhost.",
        ),
        (
            "DNS name *.localhost",
            "http://hooks.localhost:{port}/",
            "hooks.localhost",
        ),
    ] {
        rows.push(Row {
            host: Some(host),
            ..row(case, url, Port::Rx4, "127.0.0.1", "loopback", true)
        });
    }
    rows
}

fn envelope(id: &str, app: &str, endpoint: &str) -> String {
    TestEnvelope::new(id, app, endpoint)
        .event_type("ssrf.probe")
        .payload(json!({"id": id}))
        .to_json()
}

fn loopback_allowlist() -> Allowlist {
    Allowlist::parse(&["127.0.0.0/8", "::1/128"]).unwrap()
}

/// The refusal the guard gives for `row`, as the DLQ reason shows it.
fn expected_reason(row: &Row) -> String {
    let prefix = row
        .host
        .map(|h| format!("{h} resolves to {}; ", row.addr))
        .unwrap_or_default();
    format!(
        "refused by policy: {prefix}{} is a forbidden address ({}): refused by the SSRF guard (allow it per application with allowed_networks)",
        row.addr, row.reason
    )
}

/// The safety gate: the pure check refuses `url` under `allow` with the row's address and
/// reason, or (for a row expected to deliver) accepts it and its address is loopback.
fn gate(row: &Row, url: &str, allow: &Allowlist, expect_delivery: bool) {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{}: {url}: {e}", row.case));
    match ssrf::check_url(&parsed, allow) {
        Err(SsrfError::Forbidden { addr, reason, .. }) => {
            assert!(!expect_delivery, "{}: {url} refused: {reason}", row.case);
            assert_eq!(addr.to_string(), row.addr, "{}: {url}", row.case);
            assert_eq!(reason.as_str(), row.reason, "{}: {url}", row.case);
        }
        Err(e) => panic!("{}: {url}: {e}", row.case),
        Ok(()) => {
            assert!(
                expect_delivery,
                "SAFETY: the SSRF guard accepts {url} ({}); not sending it",
                row.case
            );
            let ip: IpAddr = match parsed.host() {
                Some(url::Host::Ipv4(v4)) => v4.into(),
                Some(url::Host::Ipv6(v6)) => v6.to_ipv4_mapped().map_or(v6.into(), Into::into),
                Some(url::Host::Domain(d)) => {
                    assert!(ssrf::is_localhost_name(d), "{url}");
                    ssrf::LOCALHOST_ADDR
                }
                None => unreachable!(),
            };
            assert!(ip.is_loopback(), "SAFETY: {url} would leave loopback");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssrf_table_refused_with_reasons_and_allowlisted_loopback_delivers() {
    ssrf_table(false).await;
}

/// The same table with every URL an endpoint registered for the application
/// (`[apps.NAME.endpoints.ID]`) and the envelopes naming only `endpoint_id`: the resolved URL
/// meets the same guard, with the same reasons.
#[tokio::test(flavor = "multi_thread")]
async fn ssrf_table_through_endpoint_ids() {
    ssrf_table(true).await;
}

async fn ssrf_table(by_id: bool) {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["locked", "trusted"]).await;
    let rx4 = Receiver::start(Reply::Status(204)).await;
    let rx6 = Receiver::start_on("::1".parse().unwrap(), Reply::Status(204)).await;
    let remote_port = 9; // discard: never contacted
    let url_of = |row: &Row, i: usize, app: &str| {
        let port = match row.port {
            Port::Rx4 => rx4.addr().port(),
            Port::Rx6 => rx6.addr().port(),
            Port::Remote => remote_port,
        };
        // The spelling as written (the envelope carries it; the engine normalises it), with
        // a path per row and app, so what reached a receiver is attributable.
        assert!(row.url.ends_with('/'), "{}", row.url);
        format!("{}{app}-r{i}", row.url.replace("{port}", &port.to_string()))
    };

    // Redirects: an allowed loopback receiver answering 3xx towards forbidden places, and
    // towards itself. Scripted for more attempts than max_attempts, so a follow or an
    // extra attempt would show.
    let redirects = [
        (
            "/redir-meta",
            302,
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
        ("/redir-private", 307, "http://10.0.0.1/admin".to_string()),
        (
            "/redir-localhost",
            301,
            format!("http://localhost:{}/landing", rx4.addr().port()),
        ),
        ("/redir-self", 308, rx4.url("/landing")),
    ];
    for (path, status, location) in &redirects {
        rx4.script(
            path,
            vec![Reply::StatusWith(*status, vec![("location".into(), location.clone())]); 6],
        );
    }

    let rows = table();
    assert!(rows.len() >= 20);
    let none = Allowlist::default();
    let loopback = loopback_allowlist();
    // (app, event id, URL) of every event, each URL through the safety gate first.
    let mut events: Vec<(&str, String, String)> = Vec::new();
    let mut dlq_expected = 0u64;
    for (i, row) in rows.iter().enumerate() {
        let url = url_of(row, i, "locked");
        gate(row, &url, &none, false);
        events.push(("locked", format!("locked-r{i}"), url));
        dlq_expected += 1;

        let url = url_of(row, i, "trusted");
        gate(row, &url, &loopback, row.delivers_when_loopback_allowed);
        events.push(("trusted", format!("trusted-r{i}"), url));
        dlq_expected += u64::from(!row.delivers_when_loopback_allowed);
    }
    for (path, _, _) in &redirects {
        let id = format!("trusted{}", path.replace('/', "-"));
        events.push(("trusted", id, rx4.url(path)));
        dlq_expected += 1;
    }
    // Through endpoint ids: each URL is an endpoint of its application (its id the event's),
    // and the envelope names only the id.
    let mut extra = [
        ("locked", "allowed_networks = []".to_string()),
        (
            "trusted",
            "allowed_networks = [\"127.0.0.0/8\", \"::1/128\"]\n[apps.trusted.retry]\nmax_attempts = 2"
                .to_string(),
        ),
    ];
    if by_id {
        for (app, id, url) in &events {
            let table = &mut extra.iter_mut().find(|(a, _)| a == app).unwrap().1;
            table.push_str(&format!("\n[apps.{app}.endpoints.{id}]\nurl = {url:?}"));
        }
    }
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[("locked", &extra[0].1), ("trusted", &extra[1].1)],
    ));
    for (app, id, url) in &events {
        let body = if by_id {
            TestEnvelope::for_endpoint_id(id, app, id)
                .event_type("ssrf.probe")
                .payload(json!({"id": id}))
                .to_json()
        } else {
            envelope(id, app, url)
        };
        q.send(app, &body).await;
    }

    eventually(
        SETTLE,
        "both queues drained and every refusal dead-lettered",
        || async {
            for app in ["locked", "trusted"] {
                if q.depth(q.app(app)).await != (0, 0, 0) {
                    return None;
                }
            }
            (q.depth(&q.dlq).await.0 == dlq_expected).then_some(())
        },
    )
    .await;
    let mut run = run;
    assert!(run.is_running());
    assert!(run.terminate().success());

    let dead = q.drain(&q.dlq).await;
    assert_eq!(dead.len() as u64, dlq_expected);
    let dlq = |id: &str| {
        dead.iter()
            .find(|m| msg_attr(m, "squall-event-id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} is not in the DLQ"))
    };
    let mut printed = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let want = expected_reason(row);
        for app in ["locked", "trusted"] {
            let path = format!("/{app}-r{i}");
            let reached = rx4.requests_for(&path).len() + rx6.requests_for(&path).len();
            if app == "trusted" && row.delivers_when_loopback_allowed {
                let reqs = match row.port {
                    Port::Rx6 => rx6.requests_for(&path),
                    _ => rx4.requests_for(&path),
                };
                assert_eq!(
                    reqs.len(),
                    1,
                    "{}: delivered once under the allow-list",
                    row.case
                );
                assert_eq!(
                    verify_recorded(TEST_SECRET, &reqs[0]).unwrap(),
                    format!("trusted-r{i}")
                );
                continue;
            }
            assert_eq!(
                reached, 0,
                "{} ({app}): nothing may reach the receiver",
                row.case
            );
            let m = dlq(&format!("{app}-r{i}"));
            if by_id {
                let id = format!("{app}-r{i}");
                assert_eq!(msg_attr(m, "squall-endpoint-id"), Some(id), "{}", row.case);
            }
            let reason = msg_attr(m, "squall-reason").unwrap_or_default();
            assert_eq!(reason, want, "{} ({app})", row.case);
            assert_eq!(
                msg_attr(m, "squall-last-error").unwrap_or_default(),
                want.replace("refused by policy: ", "refused-by-policy: "),
                "{} ({app})",
                row.case
            );
            assert_eq!(
                msg_attr(m, "squall-attempts").as_deref(),
                Some("1"),
                "not retried"
            );
            if app == "locked" {
                printed.push(format!("| {} | `{}` | {} |", row.case, row.url, reason));
            }
        }
    }
    eprintln!("{}", printed.join("\n"));

    // Redirects: recorded as the 3xx status, never followed; retried as a failure up to
    // max_attempts, then dead-lettered naming the status.
    assert!(
        rx4.requests_for("/landing").is_empty(),
        "no redirect was followed"
    );
    for (path, status, _) in &redirects {
        assert_eq!(
            rx4.requests_for(path).len(),
            2,
            "{path}: two attempts (max_attempts = 2)"
        );
        let m = dlq(&format!("trusted{}", path.replace('/', "-")));
        assert_eq!(
            msg_attr(m, "squall-reason").as_deref(),
            Some(
                format!("gave up after 2 attempts (max_attempts); last: status {status}").as_str()
            ),
        );
        assert_eq!(msg_attr(m, "squall-last-status"), Some(status.to_string()));
        eprintln!(
            "| redirect {status} from {path} | {:?} |",
            msg_attr(m, "squall-reason")
        );
    }
    assert_eq!(
        rx4.requests().len() + rx6.requests().len(),
        rows.iter()
            .filter(|r| r.delivers_when_loopback_allowed)
            .count()
            + 2 * redirects.len(),
        "exactly the allowed rows and the redirect attempts reached a receiver"
    );
}
