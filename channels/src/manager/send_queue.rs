//! The bounded queue between the Access Manager and the notifier: codes and security alerts
//! leave the request path here, drained by one task per node into the notifier's durable
//! queue.
//!
//! Registration hands over a message for every request, known phone or not (`None` when no
//! code goes out), as the last step of its work: the request path is the same either way,
//! and the notifier's write and the SMS delivery never overlap the request they belong to.
//! A full queue drops the message (logged): the customer asks for a new code, and a burst
//! cannot grow memory without bound.

use std::sync::Arc;

use tokio::sync::mpsc;

/// Messages waiting for the notifier, at most.
pub const SEND_QUEUE_CAPACITY: usize = 1024;

pub struct SendQueue {
    sender: mpsc::Sender<Option<notifier::NotificationRequest>>,
}

impl SendQueue {
    /// Starts the draining task (on the current runtime); it ends when the queue is dropped.
    pub fn start(queue: Option<Arc<dyn notifier::WorkQueue>>) -> Self {
        let (sender, mut receiver) =
            mpsc::channel::<Option<notifier::NotificationRequest>>(SEND_QUEUE_CAPACITY);
        tokio::spawn(async move {
            while let Some(message) = receiver.recv().await {
                let Some(request) = message else {
                    continue;
                };
                let Some(queue) = &queue else {
                    tracing::warn!("no notifier queue: message not sent");
                    continue;
                };
                if let Err(error) = queue.enqueue(&request).await {
                    tracing::warn!(%error, "message not queued for the notifier");
                }
            }
        });
        Self { sender }
    }

    /// Hands a message over without waiting (`None`: nothing to send, the same step).
    pub(crate) fn push(&self, message: Option<notifier::NotificationRequest>) {
        if self.sender.try_send(message).is_err() {
            tracing::warn!("the send queue is full: message dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_growing() {
        let (sender, receiver) = mpsc::channel(2);
        let queue = SendQueue { sender };
        for _ in 0..5 {
            queue.push(None);
        }
        // Only the capacity was kept; the rest was dropped without waiting.
        assert_eq!(receiver.len(), 2);
    }
}
