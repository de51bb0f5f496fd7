//! Acting on a queue: what the pipeline decided ([`Action`]) done with batched queue calls.
//!
//! [`Actor::apply`] sends first (re-sent copies, dead letters) and changes visibilities, then
//! deletes only the messages whose send succeeded, and reports per-message failures: a message
//! whose action failed is left alone, so it reappears after its visibility timeout (a
//! duplicate, never a loss). `squall run` acts in [`ActMode::Runner`]; the Lambda handler in
//! [`ActMode::Lambda`], where the event source mapping does the deleting.

use std::sync::Arc;

use crate::pipeline::Action;
use crate::queue::{Outgoing, Queue, QueueError, Received, VisibilityChange};

/// Where acting happens, which decides who deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActMode {
    /// `squall run`: the runner deletes (after any send succeeded).
    Runner,
    /// Lambda: the event source mapping deletes every message not reported as failed, so the
    /// actor never deletes; `RetryByVisibility` messages must be reported as failures.
    Lambda,
}

/// Which step of an action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// Sending the re-sent copy or the DLQ message failed (the original was kept).
    #[error("send failed (message kept): {0}")]
    Send(QueueError),
    /// ChangeMessageVisibility failed (the message reappears after its current timeout).
    #[error("change visibility failed: {0}")]
    ChangeVisibility(QueueError),
    /// Delete failed (the message reappears: a duplicate, never a loss).
    #[error("delete failed: {0}")]
    Delete(QueueError),
}

/// Applies actions to a queue with batched calls.
pub struct Actor<Q: Queue> {
    queue: Arc<Q>,
    dead_letter_queue_url: String,
    mode: ActMode,
}

impl<Q: Queue> Actor<Q> {
    /// An actor sending dead letters to `dead_letter_queue_url`.
    pub fn new(queue: Arc<Q>, dead_letter_queue_url: String, mode: ActMode) -> Actor<Q> {
        Actor {
            queue,
            dead_letter_queue_url,
            mode,
        }
    }

    /// Apply `actions[i]` to `messages[i]` received from `queue_url`. Returns one result per
    /// message, in order. Sends (re-sent copies, dead letters) and visibility changes go
    /// first; a message is deleted only after its send succeeded.
    pub async fn apply(
        &self,
        queue_url: &str,
        messages: &[&Received],
        actions: &[&Action],
    ) -> Vec<Result<(), ActError>> {
        assert_eq!(messages.len(), actions.len(), "one action per message");
        let mut results: Vec<Result<(), ActError>> = vec![Ok(()); messages.len()];
        let (mut resend_idx, mut resend) = (Vec::new(), Vec::new());
        let (mut dlq_idx, mut dlq) = (Vec::new(), Vec::new());
        let (mut vis_idx, mut vis) = (Vec::new(), Vec::new());
        for (i, (m, a)) in messages.iter().zip(actions).enumerate() {
            match a {
                Action::Resend {
                    delay_secs,
                    attributes,
                    ..
                } => {
                    resend_idx.push(i);
                    resend.push(Outgoing {
                        body: m.body.clone(),
                        delay_secs: *delay_secs,
                        attributes: attributes.clone(),
                        // A shared queue's copy stays in its application's group.
                        group_id: m.group_id.clone(),
                    });
                }
                Action::DeadLetter { attributes, .. } => {
                    dlq_idx.push(i);
                    dlq.push(Outgoing {
                        body: m.body.clone(),
                        delay_secs: 0,
                        attributes: attributes.clone(),
                        // Kept, so a redrive returns it to the shared queue in its group.
                        group_id: m.group_id.clone(),
                    });
                }
                Action::RetryByVisibility { secs } => {
                    vis_idx.push(i);
                    vis.push(VisibilityChange {
                        receipt_handle: m.receipt_handle.clone(),
                        timeout_secs: *secs,
                    });
                }
                Action::Delete { .. } => {}
            }
        }
        let (r_resend, r_dlq, r_vis) = tokio::join!(
            async {
                if resend.is_empty() {
                    Vec::new()
                } else {
                    self.queue.send_batch(queue_url, &resend).await
                }
            },
            async {
                if dlq.is_empty() {
                    Vec::new()
                } else {
                    self.queue
                        .send_batch(&self.dead_letter_queue_url, &dlq)
                        .await
                }
            },
            async {
                if vis.is_empty() {
                    Vec::new()
                } else {
                    self.queue.change_visibility_batch(queue_url, &vis).await
                }
            },
        );
        for (idx, res) in [(&resend_idx, r_resend), (&dlq_idx, r_dlq)] {
            for (&i, r) in idx.iter().zip(res) {
                if let Err(e) = r {
                    results[i] = Err(ActError::Send(e));
                }
            }
        }
        for (&i, r) in vis_idx.iter().zip(r_vis) {
            if let Err(e) = r {
                results[i] = Err(ActError::ChangeVisibility(e));
            }
        }
        if self.mode == ActMode::Runner {
            let del_idx: Vec<usize> = actions
                .iter()
                .enumerate()
                .filter(|(i, a)| {
                    !matches!(a, Action::RetryByVisibility { .. }) && results[*i].is_ok()
                })
                .map(|(i, _)| i)
                .collect();
            if !del_idx.is_empty() {
                let handles: Vec<String> = del_idx
                    .iter()
                    .map(|&i| messages[i].receipt_handle.clone())
                    .collect();
                let r_del = self.queue.delete_batch(queue_url, &handles).await;
                for (&i, r) in del_idx.iter().zip(r_del) {
                    if let Err(e) = r {
                        results[i] = Err(ActError::Delete(e));
                    }
                }
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pipeline::DeleteReason;
    use crate::queue::Attributes;
    use crate::queue::memory::MemoryQueues;
    use crate::testing::queues;

    fn received(body: &str, handle: &str) -> Received {
        Received {
            message_id: format!("id-{body}"),
            receipt_handle: handle.into(),
            body: body.into(),
            attributes: Attributes::new(),
            receive_count: 1,
            sent_timestamp_ms: 0,
            group_id: None,
        }
    }

    async fn receive_all(qs: &MemoryQueues, q: &str) -> Vec<Received> {
        qs.receive(q, 10, Duration::ZERO).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn actor_sends_before_deleting_and_keeps_what_failed() {
        let qs = queues(100);
        let bodies = ["deliver", "later", "copy", "dead"];
        qs.send_batch(
            "app",
            &bodies
                .iter()
                .map(|b| Outgoing {
                    body: b.to_string(),
                    delay_secs: 0,
                    attributes: Attributes::new(),
                    group_id: None,
                })
                .collect::<Vec<_>>(),
        )
        .await;
        let got = receive_all(&qs, "app").await;
        let attrs = Attributes::from([("squall-reason".to_string(), "status 410".to_string())]);
        let actions = [
            Action::Delete {
                why: DeleteReason::Delivered,
            },
            Action::RetryByVisibility { secs: 7 },
            Action::Resend {
                delay_secs: 30,
                attributes: Attributes::from([("squall-attempts".to_string(), "1".to_string())]),
                hop: false,
            },
            Action::DeadLetter {
                reason: "status 410".into(),
                attributes: attrs.clone(),
            },
        ];
        let actor = Actor::new(qs.clone(), "dlq".into(), ActMode::Runner);
        let msgs: Vec<&Received> = got.iter().collect();
        let acts: Vec<&Action> = actions.iter().collect();
        let res = actor.apply("app", &msgs, &acts).await;
        assert!(res.iter().all(Result::is_ok), "{res:?}");
        // Left: the visibility-parked original (in flight) and the delayed copy.
        let left = qs.messages("app").unwrap();
        let mut left_bodies: Vec<&str> = left.iter().map(|m| m.body.as_str()).collect();
        left_bodies.sort();
        assert_eq!(left_bodies, ["copy", "later"]);
        let copy = left.iter().find(|m| m.body == "copy").unwrap();
        assert_eq!(copy.receive_count, 0);
        assert_eq!(copy.attributes["squall-attempts"], "1");
        assert_eq!(qs.counts("app").unwrap().in_flight, 1);
        let dead = qs.messages("dlq").unwrap();
        assert_eq!(
            (dead[0].body.as_str(), &dead[0].attributes),
            ("dead", &attrs)
        );
        // The parked one is back after 7 s, the copy after 30 s.
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(receive_all(&qs, "app").await[0].body, "later");
        tokio::time::advance(Duration::from_secs(23)).await;
        assert_eq!(receive_all(&qs, "app").await[0].body, "copy");

        // A failed send keeps the original; a bad handle is reported, not hidden.
        let broken = Actor::new(qs.clone(), "no-such-dlq".into(), ActMode::Runner);
        qs.send_batch(
            "app",
            &[Outgoing {
                body: "x".into(),
                delay_secs: 0,
                attributes: Attributes::new(),
                group_id: None,
            }],
        )
        .await;
        let x = receive_all(&qs, "app").await;
        let bogus = received("y", "999.1");
        let dl = Action::DeadLetter {
            reason: "r".into(),
            attributes: Attributes::new(),
        };
        let del = Action::Delete {
            why: DeleteReason::Delivered,
        };
        let res = broken.apply("app", &[&x[0], &bogus], &[&dl, &del]).await;
        assert!(matches!(
            res[0],
            Err(ActError::Send(QueueError::QueueDoesNotExist { .. }))
        ));
        assert!(
            res[1].is_ok(),
            "deleting an unknown message is not an error"
        );
        assert!(qs.messages("app").unwrap().iter().any(|m| m.body == "x"));
        // Lambda mode: never deletes.
        let lambda = Actor::new(qs.clone(), "dlq".into(), ActMode::Lambda);
        let res = lambda.apply("app", &[&x[0]], &[&del]).await;
        assert_eq!(res, vec![Ok(())]);
        assert!(qs.messages("app").unwrap().iter().any(|m| m.body == "x"));
    }
}
