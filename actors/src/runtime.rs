//! The actix system and its arbiters: one single-threaded event loop per core, each on its
//! own OS thread, next to (not inside) the node's tokio runtime.

use std::io;
use std::thread::JoinHandle;

use actix_rt::{Arbiter, ArbiterHandle, System};

pub struct ActorRuntime {
    system: System,
    arbiters: Vec<ArbiterHandle>,
    thread: Option<JoinHandle<()>>,
}

impl ActorRuntime {
    /// Starts an actix system on a thread of its own with `arbiters` arbiters.
    pub fn start(arbiters: usize) -> io::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("actix-system".into())
            .spawn(move || {
                let runner = System::new();
                let handles: Vec<ArbiterHandle> = (0..arbiters.max(1))
                    .map(|_| Arbiter::new().handle())
                    .collect();
                let _ = ready_tx.send((System::current(), handles));
                let _ = runner.run();
            })?;
        let (system, handles) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("actix system failed to start"))?;
        Ok(Self {
            system,
            arbiters: handles,
            thread: Some(thread),
        })
    }

    pub(crate) fn arbiters(&self) -> Vec<ArbiterHandle> {
        self.arbiters.clone()
    }

    /// Stops every arbiter and the system, and waits for the system thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}
