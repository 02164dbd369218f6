//! Removal of what a finished run leaves (its run directory, staging folder and scratch root),
//! off the run's path: the report goes back to the caller while one thread per engine removes
//! the trees behind it.
//!
//! Nothing is lost or left by that. The addon's processes are gone before its tree is handed
//! over (the run's sandbox ended, its control group was emptied); the trees sit in the engine's
//! private working directory, which no addon reaches; and the engine waits for its janitor when
//! it is dropped (`addon run` drops it before exiting), or when a caller asks
//! ([`super::Engine::settle`]).

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// What is left to do after a run.
pub(super) enum Chore {
    /// Remove this tree (a missing one is fine).
    Remove(PathBuf),
    /// Something whose drop removes its directory (the run's scratch directory).
    Drop(Box<dyn Send>),
}

/// The engine's janitor: a thread that works through the chores handed to it in order.
pub(super) struct Janitor {
    tx: Option<mpsc::Sender<Vec<Chore>>>,
    pending: Arc<(Mutex<usize>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Janitor {
    pub(super) fn new() -> Janitor {
        let (tx, rx) = mpsc::channel::<Vec<Chore>>();
        let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
        let counter = pending.clone();
        let thread = std::thread::Builder::new()
            .name("addon-janitor".into())
            .spawn(move || {
                for chores in rx {
                    do_now(chores);
                    let (count, done) = &*counter;
                    let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
                    *count -= 1;
                    if *count == 0 {
                        done.notify_all();
                    }
                }
            })
            .ok();
        Janitor { tx: thread.as_ref().map(|_| tx), pending, thread }
    }

    /// Hands `chores` over; without a janitor thread (it could not be started) they are done now.
    pub(super) fn hand(&self, chores: Vec<Chore>) {
        if chores.is_empty() {
            return;
        }
        let Some(tx) = &self.tx else {
            return do_now(chores);
        };
        *self.pending.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        if let Err(mpsc::SendError(chores)) = tx.send(chores) {
            *self.pending.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            do_now(chores);
        }
    }

    /// Waits until every chore handed over so far is done.
    pub(super) fn settle(&self) {
        let (count, done) = &*self.pending;
        let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
        while *count > 0 {
            count = done.wait(count).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn do_now(chores: Vec<Chore>) {
    for chore in chores {
        match chore {
            Chore::Remove(dir) => crate::settle::remove(&dir),
            Chore::Drop(thing) => drop(thing),
        }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        // The channel closes; the thread finishes what it holds and ends.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chores_are_done_by_settle_and_by_drop() {
        let dir = tempfile::tempdir().unwrap();
        let janitor = Janitor::new();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("deep/er")).unwrap();
        std::fs::write(a.join("deep/er/f"), "x").unwrap();
        janitor.hand(vec![Chore::Remove(a.clone())]);
        janitor.settle();
        assert!(!a.exists(), "settle returned before the chore was done");

        let b = dir.path().join("b");
        let scratch = tempfile::tempdir_in(dir.path()).unwrap();
        let scratch_path = scratch.path().to_path_buf();
        std::fs::create_dir(&b).unwrap();
        janitor.hand(vec![Chore::Remove(b.clone()), Chore::Drop(Box::new(scratch))]);
        drop(janitor);
        assert!(!b.exists() && !scratch_path.exists(), "drop returned before the chores were done");
    }
}
