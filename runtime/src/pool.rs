//! A persistent thread pool for running one kernel's task range on all cores.
//!
//! Data enters as a task count and a borrowed closure `Fn(usize)`; the pool calls the closure once for
//! every task index in `0..ntasks`, on its worker threads and on the calling thread, and returns when all
//! calls have finished. Nothing leaves but the closure's side effects (kernels write through raw pointers).
//!
//! The hot path ([`ThreadPool::parallel_for`]) does not allocate: the job is published through a few atomics
//! (a generation counter, a "closed" bit and a count of joined workers packed into one `u64`), workers spin
//! briefly before sleeping on a condition variable, and tasks are handed out by an atomic counter.
//! One job runs at a time; a second thread calling `parallel_for` while a job is running runs its tasks
//! inline on its own thread instead of waiting (so concurrent model runs never deadlock or serialize).

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ACTIVE_MASK: u64 = 0xffff_ffff;
const CLOSED: u64 = 1 << 32;
const GEN_SHIFT: u32 = 33;
/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type TaskFn = dyn Fn(usize, usize) + Sync;
type Spawner<'a> = dyn FnMut(String, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>> + 'a;

/// Threads a pool may have per available core: more only slow kernels down (they compete for the cores),
/// and thousands exhaust the system's thread limit.
pub const THREADS_PER_CORE: usize = 4;

/// Cores available to this process (its CPU affinity and cgroup quota included).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most threads a pool may have on this machine: [`THREADS_PER_CORE`] per available core.
pub fn max_threads() -> usize {
    THREADS_PER_CORE * cores()
}

/// Why a pool could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "{requested} threads requested; this machine allows at most {max} ({THREADS_PER_CORE} per core, {cores} \
         core(s) available)"
    )]
    TooMany { requested: usize, max: usize, cores: usize },
    #[error("cannot start worker thread {index} of {threads}: {source}")]
    Spawn { index: usize, threads: usize, source: std::io::Error },
}

struct Job {
    f: Option<&'static TaskFn>,
    ntasks: usize,
}

struct Shared {
    /// `gen << 33 | closed << 32 | joined workers`.
    state: AtomicU64,
    /// Written only by the submitter while the job is closed and no worker is joined.
    job: UnsafeCell<Job>,
    next: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written by the thread holding `ThreadPool::submit` while no worker can read it
// (the job is closed and the joined count is 0); workers read it only after joining an open job.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of worker threads plus the calling thread. `Send + Sync`; share it behind an `Arc`.
pub struct ThreadPool {
    shared: Arc<Shared>,
    submit: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

impl ThreadPool {
    /// A pool running work on `threads` threads in all: the caller plus `threads - 1` workers; 0 means one
    /// thread per available core. Refuses more than [`max_threads`], and returns the error (after stopping
    /// the workers already started) when the system cannot start a thread.
    pub fn try_new(threads: usize) -> Result<ThreadPool, PoolError> {
        ThreadPool::start(threads, &mut |name, f| std::thread::Builder::new().name(name).spawn(f))
    }

    /// [`ThreadPool::try_new`] for tests and benches, where a failure to start threads ends the run.
    ///
    /// # Panics
    /// When [`ThreadPool::try_new`] fails.
    pub fn new(threads: usize) -> ThreadPool {
        ThreadPool::try_new(threads.max(1)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A pool with one thread per available core: [`ThreadPool::try_new`]`(0)`, panicking where that fails.
    pub fn with_all_cores() -> ThreadPool {
        ThreadPool::try_new(0).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ThreadPool::try_new`] with the thread-spawning function given (tests make it fail).
    fn start(threads: usize, spawn: &mut Spawner<'_>) -> Result<ThreadPool, PoolError> {
        let threads = if threads == 0 { cores() } else { threads };
        if threads > max_threads() {
            return Err(PoolError::TooMany { requested: threads, max: max_threads(), cores: cores() });
        }
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: UnsafeCell::new(Job { f: None, ntasks: 0 }),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        // Workers join the pool as they start, so that if one cannot start, dropping the pool stops the others.
        let mut pool = ThreadPool { shared, submit: Mutex::new(()), workers: Vec::with_capacity(threads - 1), threads };
        for i in 1..threads {
            let s = pool.shared.clone();
            match spawn(format!("resnetc-worker-{i}"), Box::new(move || worker(&s, i))) {
                Ok(h) => pool.workers.push(h),
                Err(source) => return Err(PoolError::Spawn { index: i, threads, source }),
            }
        }
        Ok(pool)
    }

    /// Number of threads that run work (workers + the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i)` for every `i` in `0..ntasks`, spread over the pool and the calling thread; returns when
    /// all calls are done. Panics (after all tasks have finished) if any call panicked.
    pub fn parallel_for(&self, ntasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.parallel_for_indexed(ntasks, &|i, _| f(i));
    }

    /// Like [`ThreadPool::parallel_for`], but calls `f(task, thread)` where `thread < self.threads()` identifies
    /// the thread running the call (0 for the caller): two calls with one `thread` never run at the same time,
    /// so `thread` can index per-thread scratch buffers.
    pub fn parallel_for_indexed(&self, ntasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if ntasks == 0 {
            return;
        }
        if ntasks == 1 || self.workers.is_empty() {
            (0..ntasks).for_each(|i| f(i, 0));
            return;
        }
        let Ok(_guard) = self.submit.try_lock() else {
            // Another job is running on the pool: do this one on the calling thread.
            (0..ntasks).for_each(|i| f(i, 0));
            return;
        };
        let s = &*self.shared;
        // SAFETY: we hold `submit`; the previous job is closed with no joined workers, so nobody reads `job`.
        // The lifetime of `f` is erased; the job is closed and drained below before this function returns.
        unsafe {
            let f = std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static TaskFn>(f);
            *s.job.get() = Job { f: Some(f), ntasks };
        }
        s.next.store(0, Relaxed);
        let gen = (s.state.load(Relaxed) >> GEN_SHIFT).wrapping_add(1) & ((1 << (64 - GEN_SHIFT)) - 1);
        s.state.store(gen << GEN_SHIFT, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap();
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| run_tasks(s, f, ntasks, 0)));
        // Close the job: no worker may join from now on; wait for the joined ones to leave.
        let mut st = s.state.fetch_or(CLOSED, AcqRel) | CLOSED;
        let mut spins = 0u32;
        while st & ACTIVE_MASK != 0 {
            // A joined worker is finishing its last task; yield if it was descheduled (oversubscribed machine).
            spins += 1;
            if spins > 4096 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            st = s.state.load(Acquire);
        }
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Relaxed) {
            panic!("a task panicked on a worker thread");
        }
    }
}

impl Default for ThreadPool {
    fn default() -> Self {
        ThreadPool::with_all_cores()
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn run_tasks(s: &Shared, f: &(dyn Fn(usize, usize) + Sync + '_), ntasks: usize, thread: usize) {
    loop {
        let i = s.next.fetch_add(1, Relaxed);
        if i >= ntasks {
            break;
        }
        f(i, thread);
    }
}

fn worker(s: &Shared, thread: usize) {
    let mut seen = s.state.load(Acquire) >> GEN_SHIFT;
    loop {
        // Wait for a new generation: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        let st = loop {
            let st = s.state.load(Acquire);
            if st >> GEN_SHIFT != seen || s.shutdown.load(Relaxed) {
                break st;
            }
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap();
                s.sleepers.fetch_add(1, SeqCst);
                loop {
                    let st = s.state.load(SeqCst);
                    if st >> GEN_SHIFT != seen || s.shutdown.load(SeqCst) {
                        break;
                    }
                    g = s.wake.wait(g).unwrap();
                }
                s.sleepers.fetch_sub(1, SeqCst);
                drop(g);
                spins = 0;
                continue;
            }
            std::hint::spin_loop();
        };
        if s.shutdown.load(Relaxed) {
            return;
        }
        seen = st >> GEN_SHIFT;
        // Try to join the job of generation `seen` while it is open.
        let mut cur = st;
        let joined = loop {
            if cur >> GEN_SHIFT != seen || cur & CLOSED != 0 {
                break false;
            }
            match s.state.compare_exchange_weak(cur, cur + 1, AcqRel, Acquire) {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: joined an open job: the submitter keeps `f` alive until we leave.
        let (f, ntasks) = unsafe {
            let j = &*s.job.get();
            (j.f.expect("an open job has a closure"), j.ntasks)
        };
        if catch_unwind(AssertUnwindSafe(|| run_tasks(s, f, ntasks, thread))).is_err() {
            s.panicked.store(true, Relaxed);
        }
        s.state.fetch_sub(1, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 5, 100, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            pool.parallel_for(n, &|i| {
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1));
        }
    }

    #[test]
    fn many_small_jobs_and_sleeping_workers() {
        let pool = ThreadPool::new(2);
        let sum = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.parallel_for(7, &|i| {
                sum.fetch_add(i, Relaxed);
            });
            if round == 1000 {
                std::thread::sleep(Duration::from_millis(2)); // let the worker fall asleep
            }
        }
        assert_eq!(sum.load(Relaxed), 2000 * 21);
    }

    #[test]
    fn concurrent_callers() {
        let pool = Arc::new(ThreadPool::new(2));
        let total = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (p, t) = (pool.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        p.parallel_for(10, &|_| {
                            t.fetch_add(1, Relaxed);
                        });
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(total.load(Relaxed), 4 * 200 * 10);
    }

    #[test]
    fn thread_indices_are_exclusive() {
        let pool = ThreadPool::new(2);
        let busy: Vec<AtomicBool> = (0..2).map(|_| AtomicBool::new(false)).collect();
        for _ in 0..50 {
            pool.parallel_for_indexed(64, &|_, t| {
                assert!(t < 2);
                assert!(!busy[t].swap(true, SeqCst));
                std::hint::black_box((0..1000).sum::<u64>());
                busy[t].store(false, SeqCst);
            });
        }
    }

    #[test]
    fn too_many_threads_are_refused() {
        let e = ThreadPool::try_new(max_threads() + 1).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains(&format!("at most {}", max_threads())), "{msg}");
        assert!(matches!(e, PoolError::TooMany { .. }));
        assert_eq!(ThreadPool::try_new(0).unwrap().threads(), cores());
        assert_eq!(ThreadPool::try_new(max_threads()).unwrap().threads(), max_threads());
    }

    #[test]
    fn a_thread_that_cannot_start_is_an_error() {
        // The third worker fails to start: the two started ones are stopped and joined, nothing panics.
        let started = Arc::new(AtomicUsize::new(0));
        let mut n = 0;
        let r = ThreadPool::start(4, &mut |name, f| {
            n += 1;
            if n == 3 {
                return Err(std::io::Error::new(std::io::ErrorKind::WouldBlock, "no more threads"));
            }
            let started = started.clone();
            std::thread::Builder::new().name(name).spawn(move || {
                started.fetch_add(1, SeqCst);
                f()
            })
        });
        let e = r.err().expect("an error");
        assert_eq!(e.to_string(), "cannot start worker thread 3 of 4: no more threads");
        assert_eq!(started.load(SeqCst), 2);
    }

    #[test]
    fn a_panicking_task_propagates() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.parallel_for(64, &|i| {
                if i == 63 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let c = AtomicUsize::new(0);
        pool.parallel_for(10, &|_| {
            c.fetch_add(1, Relaxed);
        });
        assert_eq!(c.load(Relaxed), 10);
    }
}
