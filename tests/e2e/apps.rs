//! `squall apps` (the real binary) against moto: SQS, DynamoDB, Lambda event source mappings
//! and CloudWatch alarms. Each verb says what it changed, a rerun changes nothing, a delete
//! refuses a queue holding messages and `--drain` moves them to the dead-letter queue with
//! the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aws_sdk_sqs::types::QueueAttributeName;
use squall::ops::cloudwatch::CloudWatch;
use squall::ops::rollout::{self, sdk};
use squall::queue::sqs::sdk_config;
use squall_tests::process::{Scratch, squall_bin};
use squall_tests::sqs::{TestQueues, msg_attr, settings};
use squall_tests::sqs_or_skip;

use super::ops::{create_role, zip};

/// A deployment on moto: its DLQ (named `<stack>-dlq`, so the stack is read from it), a fresh
/// registry table, a config file.
struct Deployment {
    ep: String,
    queues: TestQueues,
    stack: String,
    scratch: Scratch,
    config: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The change word of the report line `<id>: <resource> <name> <change...>`.
    fn change(&self, id: &str, resource: &str) -> String {
        let prefix = format!("{id}: {resource:<8} ");
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {resource} line for {id} in:\n{}", self.stdout));
        let rest = &line[prefix.len()..];
        rest.split_once(' ').map_or(rest, |(_, c)| c).to_string()
    }
}

impl Deployment {
    async fn new(tag: &str) -> Deployment {
        let ep = sqs_or_skip_inner();
        let queues = TestQueues::create(&ep, &[]).await;
        let stack = queues
            .dlq
            .rsplit('/')
            .next()
            .unwrap()
            .strip_suffix("-dlq")
            .unwrap()
            .to_string();
        let scratch = Scratch::new(tag);
        let config = scratch.path().join("squall.toml");
        std::fs::write(
            &config,
            format!(
                "[sqs]\nregion = \"us-east-1\"\nendpoint_url = \"{ep}\"\ndead_letter_queue_url = \"{}\"\n\n\
                 [registry]\nbackend = \"dynamodb\"\ntable = \"{stack}-registry\"\n",
                queues.dlq
            ),
        )
        .unwrap();
        Deployment {
            ep,
            queues,
            stack,
            scratch,
            config,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.scratch.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn squall(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let out = Command::new(squall_bin())
            .arg("apps")
            .args(args)
            .env("SQUALL_CONFIG", &self.config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run squall apps");
        let o = Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ squall apps {}\n{}{}", args.join(" "), o.stdout, o.stderr);
        o
    }

    fn ok(&self, args: &[&str]) -> Out {
        let o = self.squall(args, &[]);
        assert!(o.ok, "squall apps {args:?} failed: {}", o.stderr);
        o
    }

    async fn queue_attrs(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let url = self
            .queues
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .ok()?
            .queue_url?;
        let a = self
            .queues
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        let mut out: BTreeMap<String, String> = a
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v))
            .collect();
        out.insert("url".into(), url);
        Some(out)
    }

    async fn cloudwatch(&self) -> CloudWatch {
        CloudWatch::new(&sdk_config(&settings(&self.ep)).await, Some(&self.ep))
    }
}

/// The endpoint (the caller already checked that there is one).
fn sqs_or_skip_inner() -> String {
    squall_tests::sqs::endpoint().expect("checked by the test")
}

fn envelope(id: &str) -> String {
    format!(
        r#"{{"version":1,"id":"{id}","app_id":"billing","type":"invoice.paid","endpoint":"https://hooks.example.com/in","created_at":"2026-11-28T00:00:00Z","payload":{{"n":1}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_twice_update_and_delete_with_drain() {
    let _ = sqs_or_skip!();
    let d = Deployment::new("apps").await;
    let lambda = rollout::connect(&settings(&d.ep)).await;

    // The table: created once, then unchanged.
    assert_eq!(d.ok(&["init"]).change("registry", "table"), "created");
    assert_eq!(d.ok(&["init"]).change("registry", "table"), "unchanged");

    // The function the mapping feeds (moto keeps it; invoking it would need Docker).
    let function = format!("{}-squall", d.stack);
    let role = create_role(&d.ep, &format!("{}-role", d.stack)).await;
    lambda
        .create_function()
        .function_name(&function)
        .runtime(sdk::types::Runtime::Providedal2023)
        .handler("bootstrap")
        .role(&role)
        .timeout(60)
        .code(
            sdk::types::FunctionCode::builder()
                .zip_file(sdk::primitives::Blob::new(zip("apps")))
                .build(),
        )
        .send()
        .await
        .unwrap();

    // No queue_url: the queue is <stack>-billing.
    let v1 = d.file(
        "billing.toml",
        "secrets = { default = \"env:BILLING_SECRET\" }\nmax_concurrency = 40\n\n\
         [retry]\nhorizon_secs = 432000\n\n[lambda]\nage_alarm_secs = 600\n",
    );
    let v1 = v1.to_str().unwrap();
    let create = [
        "create",
        "billing",
        "--settings",
        v1,
        "--function",
        &function,
    ];
    let o = d.ok(&create);
    for r in ["queue", "item", "mapping", "alarm"] {
        assert_eq!(o.change("billing", r), "created", "{r}");
    }
    let queue = format!("{}-billing", d.stack);
    let attrs = d.queue_attrs(&queue).await.expect("queue made");
    assert_eq!(attrs["VisibilityTimeout"], "360", "6 x the function's 60 s");
    assert_eq!(attrs["MessageRetentionPeriod"], "518400", "horizon + 1 day");
    let redrive: serde_json::Value = serde_json::from_str(&attrs["RedrivePolicy"]).unwrap();
    let dlq_arn = d.queue_attrs(&format!("{}-dlq", d.stack)).await.unwrap()["QueueArn"].clone();
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "10"
    );
    let tags = d
        .queues
        .client
        .list_queue_tags()
        .queue_url(&attrs["url"])
        .send()
        .await
        .unwrap()
        .tags
        .unwrap_or_default();
    assert_eq!(tags["squall:app"], "billing");
    assert_eq!(tags["squall:stack"], d.stack);
    let mapping = |lambda: sdk::Client, arn: String| async move {
        lambda
            .list_event_source_mappings()
            .event_source_arn(arn)
            .send()
            .await
            .unwrap()
            .event_source_mappings
            .unwrap_or_default()
    };
    let m = mapping(lambda.clone(), attrs["QueueArn"].clone()).await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].batch_size(), Some(10));
    assert_eq!(
        m[0].scaling_config().and_then(|s| s.maximum_concurrency()),
        Some(4),
        "max_concurrency 40 / batch 10"
    );
    assert_eq!(
        m[0].function_response_types(),
        [sdk::types::FunctionResponseType::ReportBatchItemFailures]
    );
    let cw = d.cloudwatch().await;
    let alarm = format!("{queue}-oldest-message");
    let a = cw.describe(&alarm).await.unwrap().expect("alarm made");
    assert_eq!(a.threshold, 600.0);
    assert_eq!(a.queue_name.as_deref(), Some(queue.as_str()));

    // A create without the function, then again with it: the rerun finishes the job (the
    // queue's visibility follows the function's timeout, the mapping is made).
    let crm = d.file(
        "crm-ok.toml",
        "secrets = { default = \"env:CRM_SECRET\" }\n",
    );
    let crm = crm.to_str().unwrap();
    let o = d.ok(&["create", "crm", "--settings", crm]);
    assert!(o.change("crm", "mapping").starts_with("skipped"));
    let crm_queue = format!("{}-crm", d.stack);
    assert_eq!(
        d.queue_attrs(&crm_queue).await.unwrap()["VisibilityTimeout"],
        "180",
        "6 x the 30 s minimum function timeout derived from the app"
    );
    let o = d.ok(&["create", "crm", "--settings", crm, "--function", &function]);
    assert_eq!(o.change("crm", "queue"), "updated (VisibilityTimeout)");
    assert_eq!(o.change("crm", "item"), "unchanged");
    assert_eq!(o.change("crm", "mapping"), "created");
    assert_eq!(o.change("crm", "alarm"), "unchanged");
    assert_eq!(
        d.queue_attrs(&crm_queue).await.unwrap()["VisibilityTimeout"],
        "360"
    );
    let o = d.ok(&["delete", "crm"]);
    for r in ["mapping", "alarm", "queue", "item"] {
        assert_eq!(o.change("crm", r), "deleted", "{r}");
    }

    // Again: nothing changes, and it says so.
    let o = d.ok(&create);
    for r in ["queue", "item", "mapping", "alarm"] {
        assert_eq!(o.change("billing", r), "unchanged", "{r}");
    }
    // Other settings under the same id: refused, pointing at update.
    let other = d.file("other.toml", "secrets = { default = \"env:X\" }\n");
    let o = d.squall(
        &["create", "billing", "--settings", other.to_str().unwrap()],
        &[],
    );
    assert!(
        !o.ok && o.stderr.contains("apps update billing"),
        "{}",
        o.stderr
    );

    // A secret outside registry.secret_path (default /squall/): refused before anything is made.
    let outside = d.file(
        "outside.toml",
        "secrets = { default = \"ssm:/elsewhere/crm\" }\n",
    );
    let o = d.squall(
        &["create", "crm", "--settings", outside.to_str().unwrap()],
        &[],
    );
    assert!(
        !o.ok && o.stderr.contains("apps.crm.secrets") && o.stderr.contains("secret_path"),
        "{}",
        o.stderr
    );
    assert!(d.queue_attrs(&format!("{}-crm", d.stack)).await.is_none());

    // The operator's policy (`squall deploy policy`) allows every call the verbs made above on
    // this stack's resources.
    let out = Command::new(squall_bin())
        .args(["deploy", "policy", "--config"])
        .arg(&d.config)
        .args([
            "--stack",
            &d.stack,
            "--account",
            "123456789012",
            "--region",
            "us-east-1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = policy.to_string();
    for action in [
        "sqs:CreateQueue",
        "sqs:TagQueue",
        "sqs:SetQueueAttributes",
        "sqs:ReceiveMessage",
        "lambda:CreateEventSourceMapping",
        "lambda:GetFunctionConfiguration",
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:DescribeAlarms",
        "dynamodb:UpdateItem",
    ] {
        assert!(text.contains(action), "{action} missing from {text}");
    }
    assert!(text.contains(&format!("arn:aws:sqs:us-east-1:123456789012:{}-*", d.stack)));

    // Another application on billing's queue: refused (the engine finds applications by queue).
    let taken = d.file(
        "crm.toml",
        &format!(
            "queue_url = \"{}\"\nsecrets = {{ default = \"env:X\" }}\n",
            attrs["url"]
        ),
    );
    let o = d.squall(
        &["create", "crm", "--settings", taken.to_str().unwrap()],
        &[],
    );
    assert!(
        !o.ok
            && o.stderr
                .contains("already the queue of application billing"),
        "{}",
        o.stderr
    );

    // list and show.
    let o = d.ok(&["list", "--json"]);
    let rows: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "billing");
    assert_eq!(rows[0]["version"], 1);
    assert_eq!(rows[0]["tier"], "dedicated");
    assert_eq!(rows[0]["queue"], format!("123456789012/{queue}"));
    assert!(d.ok(&["list"]).stdout.contains("billing"));
    let o = d.ok(&["show", "billing"]);
    assert!(o.stdout.contains("version = 1"), "{}", o.stdout);
    assert!(o.stdout.contains("max_concurrency = 40"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains(&format!("queue_url = \"{}\"", attrs["url"])),
        "{}",
        o.stdout
    );
    let o = d.squall(&["show", "nobody"], &[]);
    assert!(!o.ok && o.stderr.contains("nobody"), "{}", o.stderr);

    // update: version 2, mapping concurrency and alarm follow; a stale version is refused.
    let v2 = d.file(
        "billing2.toml",
        "secrets = { default = \"env:BILLING_SECRET\" }\nmax_concurrency = 80\n\n\
         [retry]\nhorizon_secs = 432000\n\n[lambda]\nage_alarm_secs = 900\n",
    );
    let v2 = v2.to_str().unwrap();
    let o = d.ok(&[
        "update",
        "billing",
        "--settings",
        v2,
        "--expect-version",
        "1",
    ]);
    assert_eq!(o.change("billing", "queue"), "unchanged");
    assert_eq!(o.change("billing", "item"), "updated (version 2)");
    assert!(o.change("billing", "mapping").starts_with("updated"));
    assert!(o.change("billing", "alarm").starts_with("updated"));
    let m = mapping(lambda.clone(), attrs["QueueArn"].clone()).await;
    assert_eq!(
        m[0].scaling_config().and_then(|s| s.maximum_concurrency()),
        Some(8)
    );
    assert_eq!(cw.describe(&alarm).await.unwrap().unwrap().threshold, 900.0);
    let o = d.squall(
        &[
            "update",
            "billing",
            "--settings",
            v1,
            "--expect-version",
            "1",
        ],
        &[],
    );
    assert!(!o.ok && o.stderr.contains("version 2"), "{}", o.stderr);
    assert!(d.ok(&["show", "billing"]).stdout.contains("version = 2"));
    // Another queue for the same application: refused, nothing changed.
    let moved = d.file(
        "billing-moved.toml",
        &format!(
            "queue_url = \"{}/123456789012/{}-elsewhere\"\nsecrets = {{ default = \"env:BILLING_SECRET\" }}\n",
            d.ep, d.stack
        ),
    );
    let o = d.squall(
        &["update", "billing", "--settings", moved.to_str().unwrap()],
        &[],
    );
    assert!(
        !o.ok && o.stderr.contains("apps.billing.queue_url") && o.stderr.contains("cannot change"),
        "{}",
        o.stderr
    );
    assert!(d.ok(&["show", "billing"]).stdout.contains("version = 2"));
    assert!(
        d.queue_attrs(&format!("{}-elsewhere", d.stack))
            .await
            .is_none()
    );

    // Messages waiting: delete refuses and changes nothing.
    for i in 0..3 {
        d.queues
            .client
            .send_message()
            .queue_url(&attrs["url"])
            .message_body(envelope(&format!("evt_{i}")))
            .send()
            .await
            .unwrap();
    }
    let o = d.squall(&["delete", "billing"], &[]);
    assert!(
        !o.ok && o.stderr.contains("holds messages") && o.stderr.contains("--drain"),
        "{}",
        o.stderr
    );
    assert!(d.queue_attrs(&queue).await.is_some(), "queue kept");
    assert_eq!(
        mapping(lambda.clone(), attrs["QueueArn"].clone())
            .await
            .len(),
        1
    );

    // --drain: mapping removed first, the three moved to the DLQ with the reason, then the rest.
    let o = d.ok(&["delete", "billing", "--drain", "--drain-wait", "60s"]);
    assert_eq!(o.change("billing", "mapping"), "deleted");
    assert!(
        o.change("billing", "messages").starts_with("3 moved"),
        "{}",
        o.stdout
    );
    for r in ["alarm", "queue", "item"] {
        assert_eq!(o.change("billing", r), "deleted", "{r}");
    }
    let dead = d.queues.drain(&d.queues.dlq).await;
    let mut ids: Vec<String> = dead
        .iter()
        .map(|m| {
            assert_eq!(
                msg_attr(m, "squall-reason").as_deref(),
                Some("application-deleted")
            );
            assert_eq!(msg_attr(m, "squall-app-id").as_deref(), Some("billing"));
            assert_eq!(
                msg_attr(m, "squall-source-queue").as_deref(),
                Some(attrs["url"].as_str())
            );
            let id = msg_attr(m, "squall-event-id").unwrap();
            assert_eq!(m.body(), Some(envelope(&id).as_str()), "body byte for byte");
            id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["evt_0", "evt_1", "evt_2"]);
    assert!(d.queue_attrs(&queue).await.is_none(), "queue deleted");
    assert!(
        cw.describe(&alarm).await.unwrap().is_none(),
        "alarm deleted"
    );
    assert!(
        mapping(lambda.clone(), attrs["QueueArn"].clone())
            .await
            .is_empty()
    );
    assert!(d.ok(&["list", "--json"]).stdout.trim().is_empty());

    // Again: everything already absent.
    let o = d.ok(&["delete", "billing"]);
    for r in ["mapping", "alarm", "queue", "item"] {
        assert_eq!(o.change("billing", r), "absent", "{r}");
    }

    // A queue of the default name that is no registered application's, and not tagged as
    // one: left alone.
    let ghost = format!("{}-ghost", d.stack);
    d.queues
        .client
        .create_queue()
        .queue_name(&ghost)
        .send()
        .await
        .unwrap();
    let o = d.ok(&["delete", "ghost"]);
    assert!(
        o.change("ghost", "queue").starts_with("skipped"),
        "{}",
        o.stdout
    );
    assert!(d.queue_attrs(&ghost).await.is_some(), "not ours: kept");
}

/// `squall apps import --config examples/squall.toml`: both applications registered with their
/// queue URLs as written (queues created on moto), a rerun unchanged; `--force` removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_the_example_config() {
    let _ = sqs_or_skip!();
    let d = Deployment::new("apps-import").await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/squall.toml");
    let example = example.to_str().unwrap();
    let table = format!("{}-registry", d.stack);
    // The example names the file registry and AWS endpoints: the environment overlays the
    // deployment's (as in a real deployment's shell).
    let env = [
        ("SQUALL__REGISTRY__BACKEND", "dynamodb"),
        ("SQUALL__REGISTRY__TABLE", table.as_str()),
        ("SQUALL__SQS__ENDPOINT_URL", d.ep.as_str()),
        ("SQUALL__SQS__REGION", "us-east-1"),
        ("SQUALL__SQS__DEAD_LETTER_QUEUE_URL", d.queues.dlq.as_str()),
    ];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", example]);
        let o = d.squall(&all, &env);
        assert!(o.ok, "squall apps {args:?}: {}", o.stderr);
        o
    };
    // Without the overlay the example is a file registry: refused, naming the fix.
    let o = d.squall(&["list", "--config", example], &[]);
    assert!(
        !o.ok && o.stderr.contains("backend = \"dynamodb\""),
        "{}",
        o.stderr
    );
    run(&["init"]);
    let o = run(&["import"]);
    for id in ["billing", "shop"] {
        assert_eq!(o.change(id, "item"), "created", "{id}");
        assert!(o.change(id, "mapping").starts_with("skipped"), "{id}");
        assert!(
            ["created", "unchanged"].contains(&o.change(id, "alarm").as_str())
                || o.change(id, "alarm").starts_with("updated"),
            "{id}"
        );
    }
    assert!(
        o.stdout.contains("imported 2 application(s)"),
        "{}",
        o.stdout
    );
    // The shop's [apps.shop.endpoints.acme] table went into its item's endpoints.
    assert_eq!(o.change("shop", "endpoint"), "created");
    let o = run(&["import"]);
    for id in ["billing", "shop"] {
        for r in ["queue", "item", "alarm"] {
            assert_eq!(o.change(id, r), "unchanged", "{id} {r}");
        }
    }
    assert_eq!(o.change("shop", "endpoint"), "unchanged");
    let shown = Command::new(squall_bin())
        .args([
            "endpoints",
            "--config",
            example,
            "--app",
            "shop",
            "show",
            "acme",
        ])
        .envs(env.iter().copied())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("https://hooks.acme.example/stripe") && shown.contains("x-tenant: acme"),
        "{shown}"
    );
    let o = run(&["list", "--json"]);
    let queues: Vec<String> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["queue"].to_string())
        .collect();
    assert_eq!(
        queues,
        [
            "\"123456789012/squall-billing\"",
            "\"123456789012/squall-shop\""
        ]
    );
    // The queue URLs are kept as the file wrote them.
    let o = run(&["show", "shop"]);
    assert!(
        o.stdout
            .contains("https://sqs.eu-west-1.amazonaws.com/123456789012/squall-shop"),
        "{}",
        o.stdout
    );
    for id in ["billing", "shop"] {
        let o = run(&["delete", id, "--force"]);
        assert_eq!(o.change(id, "queue"), "deleted");
        assert_eq!(o.change(id, "item"), "deleted");
    }
}
