//! `squall deploy template` for a registry deployment (`registry.backend = "dynamodb"`) prints
//! the same bytes whatever the registry holds: 10 applications, then 10,000, registered in
//! the DynamoDB table (moto) made by the engine's own `DynamoStore::create_table`, and the
//! real `squall` binary run each time.

use std::collections::HashMap;
use std::process::Command;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, Select, WriteRequest};
use squall::registry::DynamoStore;
use squall_tests::process::{Scratch, squall_bin};
use squall_tests::sqs::settings;
use squall_tests::sqs_or_skip;

/// The app queues' stack prefix in the items (the template must not care).
const STACK: &str = "squall-tpl";

fn item(i: usize) -> HashMap<String, AttributeValue> {
    let id = format!("app{i:05}");
    let queue_url = format!("https://sqs.us-east-1.amazonaws.com/123456789012/{STACK}-{id}");
    HashMap::from([
        ("app_id".to_string(), AttributeValue::S(id.clone())),
        (
            "queue_key".to_string(),
            AttributeValue::S(format!("123456789012/{STACK}-{id}")),
        ),
        ("version".to_string(), AttributeValue::N("1".into())),
        ("tier".to_string(), AttributeValue::S("dedicated".into())),
        (
            "settings".to_string(),
            AttributeValue::S(format!(
                "queue_url = \"{queue_url}\"\nsecrets = {{ default = \"ssm:/squall/{id}\" }}\n"
            )),
        ),
        ("updated_ms".to_string(), AttributeValue::N("0".into())),
    ])
}

/// Register items `range` with BatchWriteItem, 25 per call (the API's limit), retrying what
/// the server leaves unprocessed.
async fn register(client: &aws_sdk_dynamodb::Client, table: &str, range: std::ops::Range<usize>) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(25) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|&i| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item(i)))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        for _ in 0..10 {
            let out = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .expect("BatchWriteItem");
            requests = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
            if requests.is_empty() {
                break;
            }
        }
        assert!(requests.is_empty(), "items left unprocessed after 10 tries");
    }
}

async fn count(client: &aws_sdk_dynamodb::Client, table: &str) -> i64 {
    let mut total = 0;
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .select(Select::Count)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("Scan");
        total += i64::from(page.count);
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return total,
        }
    }
}

fn deploy_template(config: &std::path::Path) -> String {
    let out = Command::new(squall_bin())
        .args(["deploy", "template", "--config"])
        .arg(config)
        .output()
        .expect("run squall deploy template");
    assert!(
        out.status.success(),
        "squall deploy template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 template")
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_template_is_the_same_for_10_and_10000_applications() {
    let endpoint = sqs_or_skip!();
    let sdk = squall::queue::sqs::sdk_config(&settings(&endpoint)).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!(
        "squall-tpl-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    );
    let store = DynamoStore::new(client.clone(), table.clone());
    assert!(store.create_table().await.expect("CreateTable"));

    let scratch = Scratch::new("template");
    let config = scratch.path().join("squall.toml");
    std::fs::write(
        &config,
        format!(
            "[sqs]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\n\
             [registry]\nbackend = \"dynamodb\"\ntable = \"{table}\"\n"
        ),
    )
    .unwrap();

    register(&client, &table, 0..10).await;
    assert_eq!(count(&client, &table).await, 10);
    let with_10 = deploy_template(&config);

    register(&client, &table, 10..10_000).await;
    assert_eq!(count(&client, &table).await, 10_000);
    let with_10000 = deploy_template(&config);

    assert_eq!(
        with_10, with_10000,
        "the registry template changed with the number of registered applications"
    );
    // And it is the registry template: the table named by the config, no application in it.
    let t: serde_json::Value = serde_json::from_str(&with_10).unwrap();
    assert_eq!(
        t["Resources"]["RegistryTable"]["Properties"]["TableName"],
        table.as_str()
    );
    assert!(
        !with_10.contains("app0000"),
        "an application leaked into the template"
    );
    // One mapping only: the shared tier's queue's (dedicated applications get theirs at run
    // time from `squall apps create`).
    assert_eq!(
        with_10.matches("AWS::Lambda::EventSourceMapping").count(),
        1
    );
    assert_eq!(
        t["Resources"]["SharedQueueMapping"]["Type"],
        "AWS::Lambda::EventSourceMapping"
    );

    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .expect("DeleteTable");
}
