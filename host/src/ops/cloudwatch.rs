//! The three CloudWatch calls `squall apps` makes (PutMetricAlarm, DescribeAlarms,
//! DeleteAlarms), as SigV4-signed form posts in CloudWatch's Query protocol.
//!
//! Why not `aws-sdk-cloudwatch`: it was measured too costly to compile for three calls (it pulls
//! a CBOR codec, request compression and http 0.2 into the graph). The request is built from
//! the same SDK configuration as the other clients (region, endpoint override, credential
//! chain), signed with `aws-sigv4` (already in the graph through the SDK) and sent with the
//! engine's `reqwest`. The answers are small XML documents; the few fields read are found by
//! tag ([`xml_text`]), not by a general XML parser.

use std::time::SystemTime;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use crate::provision::AlarmSpec;

/// The Query protocol's API version of CloudWatch.
const API_VERSION: &str = "2010-08-01";
/// SigV4 service name of CloudWatch.
const SERVICE: &str = "monitoring";

/// Why a CloudWatch call failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudWatchError {
    /// No region in the SDK configuration.
    #[error("CloudWatch: no AWS region (set sqs.region or AWS_REGION)")]
    NoRegion,
    /// No credentials could be found or signed with.
    #[error("CloudWatch {action}: credentials: {message}")]
    Credentials {
        /// The action.
        action: String,
        /// Why.
        message: String,
    },
    /// The service (or the network) said no.
    #[error("CloudWatch {action} on {target}: {message}")]
    Api {
        /// The action.
        action: String,
        /// The alarm.
        target: String,
        /// Code and message, or the transport error.
        message: String,
    },
}

/// An alarm as DescribeAlarms shows it (the fields `squall apps` compares).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmView {
    /// Threshold.
    pub threshold: f64,
    /// Description.
    pub description: String,
    /// Value of the `QueueName` dimension.
    pub queue_name: Option<String>,
    /// Alarm actions (SNS topic ARNs).
    pub actions: Vec<String>,
}

impl AlarmView {
    /// Whether the alarm already is `spec`.
    pub fn is(&self, spec: &AlarmSpec) -> bool {
        self.threshold == spec.threshold_secs as f64
            && self.description == spec.description
            && self.queue_name.as_deref() == Some(spec.queue_name.as_str())
            && self.actions == spec.actions
    }
}

/// A CloudWatch client for the alarm calls.
#[derive(Debug, Clone)]
pub struct CloudWatch {
    http: reqwest::Client,
    /// (endpoint, region); `None` without a region: the calls fail, the client can be made
    /// (verbs that make no CloudWatch call need no region).
    target: Option<(String, String)>,
    credentials: Option<SharedCredentialsProvider>,
}

impl CloudWatch {
    /// From the SDK configuration the other clients use; `endpoint_url` overrides
    /// `https://monitoring.<region>.amazonaws.com/` (a local server).
    pub fn new(sdk: &aws_config::SdkConfig, endpoint_url: Option<&str>) -> CloudWatch {
        let target = sdk.region().map(|r| {
            let region = r.to_string();
            let endpoint = match endpoint_url {
                Some(u) => u.to_string(),
                None => format!("https://monitoring.{region}.amazonaws.com/"),
            };
            (endpoint, region)
        });
        CloudWatch {
            http: reqwest::Client::new(),
            target,
            credentials: sdk.credentials_provider(),
        }
    }

    async fn call(
        &self,
        target: &str,
        params: &[(String, String)],
    ) -> Result<String, CloudWatchError> {
        let (endpoint, region) = self.target.as_ref().ok_or(CloudWatchError::NoRegion)?;
        let action = params
            .iter()
            .find(|(k, _)| k == "Action")
            .map_or("?", |(_, v)| v.as_str())
            .to_string();
        let cred_err = |message: String| CloudWatchError::Credentials {
            action: action.clone(),
            message,
        };
        let provider = self
            .credentials
            .as_ref()
            .ok_or_else(|| cred_err("none configured".into()))?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| cred_err(e.to_string()))?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let identity = creds.into();
        let signing = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| cred_err(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            endpoint,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| cred_err(e.to_string()))?;
        let (instructions, _) = sign(signable, &signing)
            .map_err(|e| cred_err(e.to_string()))?
            .into_parts();
        let mut req = self
            .http
            .post(endpoint)
            .header("content-type", content_type);
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let api = |message: String| CloudWatchError::Api {
            action: action.clone(),
            target: target.to_string(),
            message,
        };
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| api(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| api(e.to_string()))?;
        if !status.is_success() {
            let code = xml_text(&text, "Code").unwrap_or_default();
            let message = xml_text(&text, "Message").unwrap_or_default();
            return Err(api(format!("HTTP {status}: {code}: {message}")));
        }
        Ok(text)
    }

    /// The alarm named `name`, if it exists.
    pub async fn describe(&self, name: &str) -> Result<Option<AlarmView>, CloudWatchError> {
        let params = query(
            "DescribeAlarms",
            [("AlarmNames.member.1".to_string(), name.to_string())],
        );
        let text = self.call(name, &params).await?;
        Ok(parse_alarm(&text, name))
    }

    /// Create or replace the alarm (PutMetricAlarm is an upsert).
    pub async fn put(&self, spec: &AlarmSpec) -> Result<(), CloudWatchError> {
        self.call(&spec.name, &put_alarm_params(spec)).await?;
        Ok(())
    }

    /// Delete the alarm (no error when it does not exist).
    pub async fn delete(&self, name: &str) -> Result<(), CloudWatchError> {
        let params = query(
            "DeleteAlarms",
            [("AlarmNames.member.1".to_string(), name.to_string())],
        );
        self.call(name, &params).await?;
        Ok(())
    }
}

fn query(action: &str, rest: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut p = vec![
        ("Action".to_string(), action.to_string()),
        ("Version".to_string(), API_VERSION.to_string()),
    ];
    p.extend(rest);
    p
}

/// PutMetricAlarm's parameters for `spec`: the alarm the template declares per queue
/// (ApproximateAgeOfOldestMessage, maximum over 60 s, 5 periods, missing data not breaching).
pub fn put_alarm_params(spec: &AlarmSpec) -> Vec<(String, String)> {
    let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut p = query(
        "PutMetricAlarm",
        [
            s("AlarmName", &spec.name),
            s("AlarmDescription", &spec.description),
            s("Namespace", "AWS/SQS"),
            s("MetricName", "ApproximateAgeOfOldestMessage"),
            s("Dimensions.member.1.Name", "QueueName"),
            s("Dimensions.member.1.Value", &spec.queue_name),
            s("Statistic", "Maximum"),
            s("Period", "60"),
            s("EvaluationPeriods", "5"),
            s("Threshold", &spec.threshold_secs.to_string()),
            s("ComparisonOperator", "GreaterThanThreshold"),
            s("TreatMissingData", "notBreaching"),
        ],
    );
    for (i, a) in spec.actions.iter().enumerate() {
        p.push((format!("AlarmActions.member.{}", i + 1), a.clone()));
    }
    p
}

/// The text of the first `<tag>...</tag>` in `xml`, entities decoded.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(unescape(&xml[start..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The alarm `name` in a DescribeAlarms answer.
fn parse_alarm(xml: &str, name: &str) -> Option<AlarmView> {
    let alarms = xml_section(xml, "MetricAlarms")?;
    if xml_text(alarms, "AlarmName").as_deref() != Some(name) {
        return None;
    }
    let actions = xml_section(alarms, "AlarmActions")
        .map(|s| members(s, "member"))
        .unwrap_or_default();
    let queue_name = xml_section(alarms, "Dimensions")
        .filter(|d| xml_text(d, "Name").as_deref() == Some("QueueName"))
        .and_then(|d| xml_text(d, "Value"));
    Some(AlarmView {
        threshold: xml_text(alarms, "Threshold")?.trim().parse().ok()?,
        description: xml_text(alarms, "AlarmDescription").unwrap_or_default(),
        queue_name,
        actions,
    })
}

/// The inside of the first `<tag>...</tag>` (raw).
fn xml_section<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

fn members(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(unescape(&after[..j]));
        rest = &after[j + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AlarmSpec {
        AlarmSpec {
            name: "acme-billing-oldest-message".into(),
            description: "Squall app billing: waited > 60 s".into(),
            queue_name: "acme-billing".into(),
            threshold_secs: 60,
            actions: vec!["arn:aws:sns:us-east-1:1:ops".into()],
        }
    }

    #[test]
    fn put_params_are_the_templates_alarm() {
        let p = put_alarm_params(&spec());
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Action"), Some("PutMetricAlarm"));
        assert_eq!(get("Version"), Some("2010-08-01"));
        assert_eq!(get("MetricName"), Some("ApproximateAgeOfOldestMessage"));
        assert_eq!(get("Dimensions.member.1.Value"), Some("acme-billing"));
        assert_eq!(get("Threshold"), Some("60"));
        assert_eq!(get("EvaluationPeriods"), Some("5"));
        assert_eq!(
            get("AlarmActions.member.1"),
            Some("arn:aws:sns:us-east-1:1:ops")
        );
    }

    #[test]
    fn describe_answers_parse_and_compare() {
        let xml = r#"<DescribeAlarmsResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/">
  <DescribeAlarmsResult><MetricAlarms><member>
    <AlarmName>acme-billing-oldest-message</AlarmName>
    <AlarmDescription>Squall app billing: waited &gt; 60 s</AlarmDescription>
    <AlarmActions><member>arn:aws:sns:us-east-1:1:ops</member></AlarmActions>
    <Dimensions><member><Name>QueueName</Name><Value>acme-billing</Value></member></Dimensions>
    <Threshold>60.0</Threshold>
  </member></MetricAlarms><CompositeAlarms/></DescribeAlarmsResult>
</DescribeAlarmsResponse>"#;
        let v = parse_alarm(xml, "acme-billing-oldest-message").unwrap();
        assert!(v.is(&spec()), "{v:?}");
        let mut other = spec();
        other.threshold_secs = 61;
        assert!(!v.is(&other));
        assert_eq!(parse_alarm(xml, "other"), None);
        let empty = "<DescribeAlarmsResponse><DescribeAlarmsResult><MetricAlarms/></DescribeAlarmsResult></DescribeAlarmsResponse>";
        assert_eq!(parse_alarm(empty, "acme-billing-oldest-message"), None);
        let err = "<ErrorResponse><Error><Code>ValidationError</Code><Message>bad &amp; worse</Message></Error></ErrorResponse>";
        assert_eq!(xml_text(err, "Message").as_deref(), Some("bad & worse"));
    }
}
