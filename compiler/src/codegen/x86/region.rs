//! Executable memory for the micro-kernels: one reserved address range per [`CodeRegion`], filled front to
//! back, W^X.
//!
//! In: kernel descriptions ([`CodeRegion::gemm`]) and the prefetch stub ([`CodeRegion::prefetch`]); each is
//! assembled once, at its final address, into read+write pages. Out: handles with that address, stable for the
//! region's life, so cranelift code can embed it (`call_indirect` on an `iconst`: no rel32 reach limit).
//! [`CodeRegion::seal`] turns every page written so far read+execute (never writable again: other threads may
//! be running code in them); kernels added later start on a fresh page. Typed function pointers
//! ([`CodeRegion::gemm_fn`]) are handed out for sealed code only. Dropping the region unmaps it: keep it alive
//! as long as any code that calls its kernels (e.g. beside the `JitCode` in the runtime program).

use super::GemmFn;
use super::{GemmUkernel, Isa, PrefetchFn, UkernelError};
use std::collections::HashMap;
use std::sync::Mutex;

/// Address range reserved by [`CodeRegion::new`] (address space only: pages are committed as code is
/// written). ResNet-50's kernels need well under 1 MiB.
pub const DEFAULT_REGION_BYTES: usize = 64 << 20;

/// Alignment of every function in the region (a cache line: the loop tops of short kernels stay within it).
const FUNC_ALIGN: usize = 64;

/// A GEMM micro-kernel installed in a [`CodeRegion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmRef {
    code: Code,
}

/// The prefetch stub (`prefetcht0 [rdi]; ret`) installed in a [`CodeRegion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefetchRef {
    code: Code,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Code {
    addr: usize,
    len: usize,
}

impl GemmRef {
    /// The kernel's absolute address (a [`super::GemmFn`] once the region is sealed).
    pub fn addr(&self) -> usize {
        self.code.addr
    }

    /// Bytes of code.
    pub fn len(&self) -> usize {
        self.code.len
    }

    pub fn is_empty(&self) -> bool {
        self.code.len == 0
    }
}

impl PrefetchRef {
    /// The stub's absolute address (a [`super::PrefetchFn`] once the region is sealed).
    pub fn addr(&self) -> usize {
        self.code.addr
    }
}

/// Executable memory holding micro-kernels; see the module docs. `Send + Sync`: kernels may be added and
/// called from any thread.
pub struct CodeRegion {
    /// Start of the reserved range (null on platforms without regions: `new` fails there).
    base: *mut u8,
    capacity: usize,
    state: Mutex<State>,
}

// SAFETY: `base` is only written through while holding `state`'s lock, in bytes no handle points to yet
// (past `State::cursor`); the bytes of handed-out code are immutable until the region is dropped.
unsafe impl Send for CodeRegion {}
unsafe impl Sync for CodeRegion {}

#[derive(Default)]
struct State {
    /// Next free byte.
    cursor: usize,
    /// `[0, sealed)` is read+execute (a page multiple).
    sealed: usize,
    /// `[sealed, committed)` is read+write (a page multiple).
    committed: usize,
    gemm: HashMap<GemmUkernel, GemmRef>,
    prefetch: Option<PrefetchRef>,
}

impl CodeRegion {
    /// A region reserving [`DEFAULT_REGION_BYTES`] bytes of address space.
    pub fn new() -> Result<CodeRegion, UkernelError> {
        CodeRegion::with_capacity(DEFAULT_REGION_BYTES)
    }

    /// A region reserving `capacity` bytes (rounded up to pages) of address space; adding code past it is an
    /// error.
    pub fn with_capacity(capacity: usize) -> Result<CodeRegion, UkernelError> {
        let capacity = capacity.max(1).next_multiple_of(sys::page_size());
        let base = sys::reserve(capacity)?;
        Ok(CodeRegion { base, capacity, state: Mutex::new(State::default()) })
    }

    /// The kernel for `uk`, assembled into this region on first request (then cached). Its address is final
    /// now; it may be called once [`CodeRegion::seal`] has run. Errors: an invalid description
    /// ([`GemmUkernel::validate`]), a tier this CPU lacks, a full region.
    pub fn gemm(&self, uk: &GemmUkernel) -> Result<GemmRef, UkernelError> {
        let mut st = self.lock()?;
        if let Some(r) = st.gemm.get(uk) {
            return Ok(*r);
        }
        uk.validate()?;
        uk.isa.check_supported()?;
        let code = self.install(&mut st, |ip| super::assemble_gemm(uk, ip))?;
        let r = GemmRef { code };
        st.gemm.insert(*uk, r);
        Ok(r)
    }

    /// The prefetch stub `prefetcht0 [rdi]; ret` (one per region). It clobbers no register, so cranelift code
    /// can call it with the `preserve_all` convention from inside a K loop.
    pub fn prefetch(&self) -> Result<PrefetchRef, UkernelError> {
        let mut st = self.lock()?;
        if let Some(r) = st.prefetch {
            return Ok(r);
        }
        let code = self.install(&mut st, prefetch_stub)?;
        let r = PrefetchRef { code };
        st.prefetch = Some(r);
        Ok(r)
    }

    /// Makes every kernel added so far executable (and its pages read-only for good). Cheap when nothing was
    /// added since the last call.
    pub fn seal(&self) -> Result<(), UkernelError> {
        let mut st = self.lock()?;
        if st.cursor == st.sealed {
            return Ok(());
        }
        // SAFETY: [sealed, committed) lies inside the reservation and holds only code written under the lock.
        unsafe { sys::protect(self.base.add(st.sealed), st.committed - st.sealed, sys::Prot::ReadExec)? };
        st.sealed = st.committed;
        st.cursor = st.committed;
        Ok(())
    }

    /// A callable pointer to a sealed kernel of this region.
    pub fn gemm_fn(&self, r: GemmRef) -> Result<GemmFn, UkernelError> {
        self.check_sealed(r.code)?;
        // SAFETY: the address is a kernel of this region with the GemmFn signature, now executable.
        Ok(unsafe { std::mem::transmute::<usize, GemmFn>(r.code.addr) })
    }

    /// A callable pointer to this region's (sealed) prefetch stub.
    pub fn prefetch_fn(&self, r: PrefetchRef) -> Result<PrefetchFn, UkernelError> {
        self.check_sealed(r.code)?;
        // SAFETY: as in `gemm_fn`.
        Ok(unsafe { std::mem::transmute::<usize, PrefetchFn>(r.code.addr) })
    }

    /// A kernel's machine code (for [`super::disassemble`] with [`GemmRef::addr`] as the base).
    pub fn bytes(&self, r: GemmRef) -> Result<&[u8], UkernelError> {
        self.check_inside(r.code)?;
        // SAFETY: inside the region, written once before the handle existed, never changed or unmapped
        // before `self` is dropped (the borrow ties the slice to `self`).
        Ok(unsafe { std::slice::from_raw_parts(r.code.addr as *const u8, r.code.len) })
    }

    /// Every GEMM kernel in the region with its handle, in address order.
    pub fn gemms(&self) -> Vec<(GemmUkernel, GemmRef)> {
        let mut v: Vec<(GemmUkernel, GemmRef)> =
            self.state.lock().map_or_else(|_| vec![], |s| s.gemm.iter().map(|(k, r)| (*k, *r)).collect());
        v.sort_by_key(|(_, r)| r.addr());
        v
    }

    /// Distinct GEMM kernels in the region.
    pub fn gemm_count(&self) -> usize {
        self.state.lock().map_or(0, |s| s.gemm.len())
    }

    /// Bytes of the region in use (code, alignment and the page ends left by `seal`).
    pub fn used_bytes(&self) -> usize {
        self.state.lock().map_or(0, |s| s.cursor)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, UkernelError> {
        self.state.lock().map_err(|_| UkernelError::Region("poisoned by a panic in another thread".into()))
    }

    fn check_inside(&self, c: Code) -> Result<(), UkernelError> {
        let base = self.base as usize;
        if c.addr < base || c.addr + c.len > base + self.capacity {
            return Err(UkernelError::Region(format!("address {:#x} is not a kernel of this region", c.addr)));
        }
        Ok(())
    }

    fn check_sealed(&self, c: Code) -> Result<(), UkernelError> {
        self.check_inside(c)?;
        let sealed = self.lock()?.sealed;
        if c.addr + c.len > self.base as usize + sealed {
            return Err(UkernelError::Region(format!(
                "the kernel at {:#x} is not executable yet: call CodeRegion::seal first",
                c.addr
            )));
        }
        Ok(())
    }

    /// Assembles code at the next aligned address (`asm(ip)`) and copies it there.
    fn install(
        &self,
        st: &mut State,
        asm: impl FnOnce(u64) -> Result<Vec<u8>, UkernelError>,
    ) -> Result<Code, UkernelError> {
        let off = st.cursor.next_multiple_of(FUNC_ALIGN);
        let addr = self.base as usize + off;
        let bytes = asm(addr as u64)?;
        let end = off + bytes.len();
        if end > self.capacity {
            return Err(UkernelError::Region(format!(
                "full: {} bytes of kernels reserved, {} more needed (CodeRegion::with_capacity)",
                self.capacity,
                end - self.capacity
            )));
        }
        if end > st.committed {
            let new_committed = end.next_multiple_of(sys::page_size());
            // SAFETY: inside the reservation, past every sealed page.
            unsafe { sys::protect(self.base.add(st.committed), new_committed - st.committed, sys::Prot::ReadWrite)? };
            st.committed = new_committed;
        }
        // SAFETY: [off, end) is read+write, inside the reservation, and no handle points into it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len()) };
        st.cursor = end;
        Ok(Code { addr, len: bytes.len() })
    }
}

impl Drop for CodeRegion {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `with_capacity`; nothing of it is used after the drop (callers keep
        // the region alive while its code can run).
        unsafe { sys::release(self.base, self.capacity) };
    }
}

impl std::fmt::Debug for CodeRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeRegion")
            .field("base", &self.base)
            .field("capacity", &self.capacity)
            .field("used_bytes", &self.used_bytes())
            .field("gemm_count", &self.gemm_count())
            .finish()
    }
}

fn prefetch_stub(ip: u64) -> Result<Vec<u8>, UkernelError> {
    #[cfg(target_arch = "x86_64")]
    {
        super::asm::prefetch_stub(ip)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ip;
        Err(UkernelError::Unsupported { isa: Isa::Avx2, missing: "an x86_64 build".into() })
    }
}

/// See [`super::fma_peak_gflops`].
pub(super) fn fma_peak_gflops(isa: Isa) -> Result<f64, UkernelError> {
    match isa {
        Isa::F32x4 => {
            if !super::cpu_has("fma") || !super::cpu_has("avx") {
                return Err(UkernelError::Unsupported {
                    isa,
                    missing: "an x86_64 CPU with FMA (to measure it)".into(),
                });
            }
        }
        _ => isa.check_supported()?,
    }
    #[cfg(target_arch = "x86_64")]
    {
        let region = CodeRegion::with_capacity(sys::page_size())?;
        let mut st = region.lock()?;
        let mut chains = 0;
        let code = region.install(&mut st, |ip| {
            let (bytes, c) = super::asm::fma_peak_loop(isa, ip)?;
            chains = c;
            Ok(bytes)
        })?;
        drop(st);
        region.seal()?;
        // SAFETY: sealed code of this region taking the iteration count in rdi.
        let f = unsafe { std::mem::transmute::<usize, unsafe extern "sysv64" fn(u64)>(code.addr) };
        let iters: u64 = 2_000_000;
        let flops = (iters as usize * chains * isa.vector_floats() * 2) as f64;
        let mut best = 0.0f64;
        for _ in 0..15 {
            let t = sys::thread_cpu_ns();
            // SAFETY: the loop only touches vector registers and rdi.
            unsafe { f(iters) };
            best = best.max(flops / (sys::thread_cpu_ns() - t).max(1) as f64);
        }
        Ok(best)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(UkernelError::Unsupported { isa, missing: "an x86_64 build".into() })
    }
}

/// The operating-system side: reserve, protect, release.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod sys {
    use super::UkernelError;

    pub enum Prot {
        ReadWrite,
        ReadExec,
    }

    pub fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            p as usize
        } else {
            4096
        }
    }

    pub fn reserve(len: usize) -> Result<*mut u8, UkernelError> {
        // SAFETY: a fresh anonymous mapping; inaccessible until `protect`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(UkernelError::Region(format!(
                "cannot reserve {len} bytes of address space: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(p.cast())
    }

    /// # Safety
    /// `[p, p + len)` must be page-aligned pages of a live reservation.
    pub unsafe fn protect(p: *mut u8, len: usize, prot: Prot) -> Result<(), UkernelError> {
        let (flags, what) = match prot {
            Prot::ReadWrite => (libc::PROT_READ | libc::PROT_WRITE, "read+write"),
            Prot::ReadExec => (libc::PROT_READ | libc::PROT_EXEC, "read+execute"),
        };
        if libc::mprotect(p.cast(), len, flags) != 0 {
            return Err(UkernelError::Region(format!(
                "cannot make {len} bytes {what}: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Nanoseconds of CPU time this thread has used: timings on a shared machine then leave out the time the
    /// thread waited for a core.
    pub fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// # Safety
    /// `[p, p + len)` must be a reservation of `reserve`, unused afterwards.
    pub unsafe fn release(p: *mut u8, len: usize) {
        libc::munmap(p.cast(), len);
    }
}

/// Platforms without micro-kernels: every region fails to be created, with a message naming the platform.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod sys {
    use super::{Isa, UkernelError};

    pub enum Prot {
        ReadWrite,
        ReadExec,
    }

    pub fn page_size() -> usize {
        4096
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn thread_cpu_ns() -> u64 {
        0
    }

    pub fn reserve(_len: usize) -> Result<*mut u8, UkernelError> {
        Err(Isa::Avx2.check_supported().err().unwrap_or_else(|| UkernelError::Region("unsupported platform".into())))
    }

    pub unsafe fn protect(_p: *mut u8, _len: usize, _prot: Prot) -> Result<(), UkernelError> {
        Err(UkernelError::Region("unsupported platform".into()))
    }

    pub unsafe fn release(_p: *mut u8, _len: usize) {}
}
