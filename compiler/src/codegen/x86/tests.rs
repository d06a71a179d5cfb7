//! The micro-kernels against a naive f64 GEMM with the same epilogue, on every wide tier this CPU has.
//!
//! Operands live in guarded mappings: a buffer either ends right at an inaccessible page (a read or write
//! past its last valid float faults) or starts 4 bytes past a 64-byte boundary (misaligned rows). Whatever a
//! kernel must not read holds NaN (so a wrong read shows in the result); whatever it must not write holds a
//! sentinel NaN payload that is checked bit for bit afterwards.

use super::*;
use proptest::prelude::*;

/// The wide tiers to test on this machine; prints the ones skipped and why (never a silent pass).
fn wide_tiers(test: &str) -> Vec<Isa> {
    let mut run = Vec::new();
    for isa in [Isa::Avx512, Isa::Avx2] {
        match isa.check_supported() {
            Ok(()) => run.push(isa),
            Err(e) => println!("{test}: tier {isa} SKIPPED: {e}"),
        }
    }
    println!("{test}: tiers run: {run:?}");
    run
}

const SENTINEL: u32 = 0x7fc0_dead;

/// Where a buffer sits in its mapping.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// Its last float ends at an inaccessible page.
    AtGuard,
    /// It starts this many bytes past a page (64-byte) boundary.
    Offset(usize),
}

/// `len` floats in an anonymous mapping followed by an inaccessible page.
struct Guarded {
    map: *mut u8,
    map_len: usize,
    data: *mut f32,
    len: usize,
}

impl Guarded {
    fn new(len: usize, place: Place) -> Guarded {
        let page = 4096;
        let body = (len * 4 + 64).next_multiple_of(page);
        let map_len = body + page;
        // SAFETY: a fresh anonymous mapping; the last page made inaccessible.
        let map = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::mprotect(p.cast::<u8>().add(body).cast(), page, libc::PROT_NONE), 0);
            p.cast::<u8>()
        };
        let start = match place {
            Place::AtGuard => body - len * 4,
            Place::Offset(o) => o,
        };
        // SAFETY: inside the read+write body.
        let data = unsafe { map.add(start).cast::<f32>() };
        let mut g = Guarded { map, map_len, data, len };
        g.slice_mut().fill(f32::from_bits(SENTINEL));
        g
    }

    fn slice_mut(&mut self) -> &mut [f32] {
        // SAFETY: `len` floats inside the mapping, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }

    fn slice(&self) -> &[f32] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

/// xorshift, in [-1, 1).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn special(&mut self) -> f32 {
        [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][self.below(3)]
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    uk: GemmUkernel,
    /// Placement of A, C and R (bias and B: always at a guard; B is then 64-byte aligned when its size is a
    /// multiple of 64 bytes, as packed panels are).
    a_place: Place,
    c_place: Place,
    /// Put NaN and ±Inf into a few operands.
    specials: bool,
    seed: u64,
}

impl Case {
    fn new(uk: GemmUkernel, seed: u64) -> Case {
        Case { uk, a_place: Place::AtGuard, c_place: Place::AtGuard, specials: false, seed }
    }
}

fn relu(x: f64) -> f64 {
    if x.is_nan() {
        x
    } else {
        x.max(0.0)
    }
}

/// Runs a case through the (sealed) kernel `f`; Err describes the first mismatch.
fn check(case: &Case, f: GemmFn) -> Result<(), String> {
    let uk = case.uk;
    let (rows, k, nr, lanes) = (uk.rows, uk.k, uk.nr, uk.lanes);
    let (ars, bks, crs) = (uk.a_row_stride / 4, uk.b_k_stride / 4, uk.c_row_stride / 4);
    let mut rng = Rng::new(case.seed);
    let e = uk.epilogue;

    // A: every element some row reads is random, the rest NaN.
    let mut a = Guarded::new((rows - 1) * ars + k, case.a_place);
    a.slice_mut().fill(f32::NAN);
    for i in 0..rows {
        for kk in 0..k {
            a.slice_mut()[i * ars + kk] = rng.f();
        }
    }
    // B: the panel's valid columns random; columns past `lanes` and row padding NaN (they must not reach a
    // stored column).
    let b_len = (k - 1) * bks + nr;
    let mut b = Guarded::new(b_len, Place::AtGuard);
    b.slice_mut().fill(f32::NAN);
    for kk in 0..k {
        for j in 0..lanes {
            b.slice_mut()[kk * bks + j] = rng.f();
        }
    }
    let mut bias = Guarded::new(lanes, Place::AtGuard);
    for x in bias.slice_mut() {
        *x = rng.f();
    }
    let c_len = (rows - 1) * crs + lanes;
    let mut res = Guarded::new(c_len, case.c_place);
    res.slice_mut().fill(f32::NAN);
    let mut c = Guarded::new(c_len, case.c_place);
    for i in 0..rows {
        for j in 0..lanes {
            res.slice_mut()[i * crs + j] = rng.f();
            if uk.accumulate {
                c.slice_mut()[i * crs + j] = rng.f();
            }
        }
    }
    if case.specials {
        for _ in 0..3 {
            let (i, kk, j) = (rng.below(rows), rng.below(k), rng.below(lanes));
            let v = rng.special();
            a.slice_mut()[i * ars + kk] = v;
            let v = rng.special();
            b.slice_mut()[rng.below(k) * bks + j] = v;
            let v = rng.special();
            match rng.below(3) {
                0 => bias.slice_mut()[j] = v,
                1 => res.slice_mut()[i * crs + j] = v,
                _ if uk.accumulate => c.slice_mut()[i * crs + j] = v,
                _ => {}
            }
        }
    }
    let c0 = c.slice().to_vec();

    // SAFETY: every operand covers what the kernel may touch (guarded); unused pointers are null.
    unsafe {
        f(
            a.data,
            b.data,
            c.data,
            if e.bias { bias.data } else { std::ptr::null() },
            if e.residual { res.data } else { std::ptr::null() },
        )
    };

    let (av, bv, cv, rv, biasv) = (a.slice(), b.slice(), c.slice(), res.slice(), bias.slice());
    // 1e-6 of sum |a*b| (plus the |C0|, |bias|, |R| added) up to K = 64; beyond, the f32 rounding of a K-term
    // sum grows like sqrt(K) for these random operands: 2.2e-6 at K = 300.
    let tol = 1e-6 * (k as f64).sqrt().max(8.0) / 8.0;
    for idx in 0..c_len {
        let (i, j) = (idx / crs.max(1), idx % crs.max(1));
        let (i, j) = if rows == 1 { (0, idx) } else { (i, j) };
        if j >= lanes {
            if cv[idx].to_bits() != c0[idx].to_bits() {
                return Err(format!("wrote C padding at row {i} column {j}: {}", cv[idx]));
            }
            continue;
        }
        let mut s = if uk.accumulate { c0[idx] as f64 } else { 0.0 };
        let mut scale = s.abs();
        for kk in 0..k {
            let p = av[i * ars + kk] as f64 * bv[kk * bks + j] as f64;
            s += p;
            scale += p.abs();
        }
        if e.bias {
            s += biasv[j] as f64;
            scale += (biasv[j] as f64).abs();
        }
        if e.relu {
            s = relu(s);
        }
        if e.residual {
            s += rv[idx] as f64;
            scale += (rv[idx] as f64).abs();
        }
        if e.relu_after_add {
            s = relu(s);
        }
        let got = cv[idx] as f64;
        let ok = if s.is_nan() {
            got.is_nan()
        } else if s.is_infinite() {
            got == s
        } else {
            (got - s).abs() <= tol * scale + 1e-30
        };
        if !ok {
            return Err(format!("C[{i}][{j}] = {got}, expected {s} (tolerance {:e})", tol * scale));
        }
    }
    Ok(())
}

/// Installs all cases' kernels in one region, seals it once, runs every case; panics listing the failures.
fn run_all(test: &str, cases: &[Case]) {
    let region = CodeRegion::new().unwrap();
    let refs: Vec<GemmRef> =
        cases.iter().map(|c| region.gemm(&c.uk).unwrap_or_else(|e| panic!("{:?}: {e}", c.uk))).collect();
    region.seal().unwrap();
    let mut failures = Vec::new();
    for (case, r) in cases.iter().zip(&refs) {
        if let Err(msg) = check(case, region.gemm_fn(*r).unwrap()) {
            failures.push(format!("{case:?}: {msg}"));
        }
    }
    println!(
        "{test}: {} cases, {} distinct kernels, {} bytes of code",
        cases.len(),
        region.gemm_count(),
        region.used_bytes()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed, e.g.:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

fn all_epilogues() -> impl Iterator<Item = Epilogue> {
    (0..16).map(|m| Epilogue { bias: m & 1 != 0, relu: m & 2 != 0, residual: m & 4 != 0, relu_after_add: m & 8 != 0 })
}

const FULL_EPILOGUE: Epilogue = Epilogue { bias: true, relu: true, residual: true, relu_after_add: true };

/// Lane counts worth testing for a panel: 1, a vector minus one, a vector plus one, nr - 1, nr.
fn lane_classes(isa: Isa, nr: usize) -> Vec<usize> {
    let vw = isa.vector_floats();
    let mut l = vec![1, vw - 1, vw + 1, nr - 1, nr];
    l.retain(|&x| x >= 1 && x <= nr);
    l.sort();
    l.dedup();
    l
}

#[test]
fn tiers_run_or_are_reported_skipped() {
    let run = wide_tiers("tiers");
    println!("available: {:?}, detected: {}", Isa::available(), Isa::detect());
    assert_eq!(Isa::available().last(), Some(&Isa::F32x4));
    assert_eq!(Isa::available()[0], Isa::detect());
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(!run.is_empty(), "this CPU has AVX2 and FMA, yet no wide tier ran");
    }
    for isa in run {
        let (mr, nr) = isa.preferred_tile();
        run_all(
            &format!("tiers/{isa}"),
            &[Case::new(GemmUkernel { epilogue: FULL_EPILOGUE, ..GemmUkernel::dense(isa, mr, nr, nr, 64) }, 1)],
        );
    }
}

#[test]
fn every_rows_and_lane_class_of_every_panel_width() {
    for isa in wide_tiers("rows_lanes") {
        let vw = isa.vector_floats();
        let mut cases = Vec::new();
        for nv in 1..=4 {
            let nr = nv * vw;
            for rows in 1..=isa.max_rows(nr) {
                for lanes in lane_classes(isa, nr) {
                    for (n, k) in [1, 7, 67].into_iter().enumerate() {
                        let uk = GemmUkernel {
                            accumulate: (rows + n) % 2 == 0,
                            epilogue: FULL_EPILOGUE,
                            ..GemmUkernel::dense(isa, rows, nr, lanes, k)
                        };
                        cases.push(Case::new(uk, cases.len() as u64));
                    }
                }
            }
        }
        run_all(&format!("rows_lanes/{isa}"), &cases);
    }
}

#[test]
fn k_from_1_to_300() {
    for isa in wide_tiers("k_sweep") {
        let (mr, nr) = isa.preferred_tile();
        let vw = isa.vector_floats();
        let mut cases = Vec::new();
        // The preferred tile (one accumulator set, unroll 4) and a one-row tile (8 interleaved sets):
        // every remainder of both unrolls, straight-line and looped K.
        for (rows, nr, lanes) in [(mr, nr, nr - 1), (1, vw, vw), (2, 2 * vw, vw + 3)] {
            for k in 1..=300 {
                let uk = GemmUkernel { accumulate: k % 3 == 0, ..GemmUkernel::dense(isa, rows, nr, lanes, k) };
                cases.push(Case::new(uk, k as u64));
            }
        }
        run_all(&format!("k_sweep/{isa}"), &cases);
    }
}

#[test]
fn every_epilogue_with_and_without_accumulation() {
    for isa in wide_tiers("epilogues") {
        let (mr, nr) = isa.preferred_tile();
        let vw = isa.vector_floats();
        let mut cases = Vec::new();
        for e in all_epilogues() {
            for accumulate in [false, true] {
                for (rows, lanes) in [(mr, nr), (3, nr - vw / 2)] {
                    for specials in [false, true] {
                        let uk =
                            GemmUkernel { accumulate, epilogue: e, ..GemmUkernel::dense(isa, rows, nr, lanes, 37) };
                        cases.push(Case { specials, ..Case::new(uk, cases.len() as u64) });
                    }
                }
            }
        }
        run_all(&format!("epilogues/{isa}"), &cases);
    }
}

#[test]
fn padded_strides_and_misaligned_rows() {
    for isa in wide_tiers("strides") {
        let (mr, nr) = isa.preferred_tile();
        let mut cases = Vec::new();
        for (n, (rows, lanes, k)) in [(mr, nr, 50), (mr - 1, nr - 3, 9), (2, 5, 130)].into_iter().enumerate() {
            for (a_pad, b_pad, c_pad) in [(0, 0, 0), (4, 16, 4), (12, 64, 36), (260, 4, 100)] {
                for (a_place, c_place) in [(Place::Offset(4), Place::Offset(4)), (Place::Offset(60), Place::AtGuard)] {
                    let uk = GemmUkernel {
                        a_row_stride: 4 * (k + a_pad),
                        b_k_stride: 4 * (nr + b_pad),
                        c_row_stride: 4 * (lanes + c_pad),
                        accumulate: n % 2 == 1,
                        epilogue: Epilogue { bias: true, relu: false, residual: true, relu_after_add: true },
                        ..GemmUkernel::dense(isa, rows, nr, lanes, k)
                    };
                    cases.push(Case { a_place, c_place, ..Case::new(uk, cases.len() as u64) });
                }
            }
        }
        // Rows that overlap in A (a row stride below 4*k) are legal reads.
        let uk = GemmUkernel { a_row_stride: 8, ..GemmUkernel::dense(isa, mr, nr, nr, 40) };
        cases.push(Case::new(uk, 99));
        run_all(&format!("strides/{isa}"), &cases);
    }
}

#[test]
fn nan_and_inf_propagate_as_ieee_says() {
    for isa in wide_tiers("nan_inf") {
        let vw = isa.vector_floats();
        let mut cases = Vec::new();
        for seed in 0..40 {
            let rows = 1 + seed as usize % isa.max_rows(2 * vw);
            let uk = GemmUkernel {
                accumulate: seed % 2 == 0,
                epilogue: all_epilogues().nth(seed as usize % 16).unwrap(),
                ..GemmUkernel::dense(isa, rows, 2 * vw, 2 * vw - (seed as usize % 3), 3 + seed as usize)
            };
            cases.push(Case { specials: true, ..Case::new(uk, seed) });
        }
        run_all(&format!("nan_inf/{isa}"), &cases);

        // Exactly: relu(NaN) = NaN, relu(-Inf) = 0, relu(+Inf) = +Inf; NaN and Inf in A reach their row.
        let region = CodeRegion::new().unwrap();
        let uk = GemmUkernel {
            epilogue: Epilogue { relu: true, ..Epilogue::NONE },
            ..GemmUkernel::dense(isa, 4, vw, vw, 1)
        };
        let r = region.gemm(&uk).unwrap();
        region.seal().unwrap();
        let a = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0];
        let b = vec![1.0f32; vw];
        let mut c = vec![0.0f32; 4 * vw];
        unsafe {
            region.gemm_fn(r).unwrap()(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), std::ptr::null(), std::ptr::null())
        };
        assert!(c[..vw].iter().all(|x| x.is_nan()), "relu(NaN) on {isa}: {:?}", &c[..vw]);
        assert!(c[vw..2 * vw].iter().all(|&x| x == f32::INFINITY), "{isa}: {:?}", &c[vw..2 * vw]);
        assert!(c[2 * vw..3 * vw].iter().all(|&x| x == 0.0), "{isa}: {:?}", &c[2 * vw..3 * vw]);
        assert!(c[3 * vw..].iter().all(|&x| x == 2.0), "{isa}: {:?}", &c[3 * vw..]);
    }
}

#[test]
fn prefetch_does_not_change_results() {
    for isa in wide_tiers("prefetch") {
        let (mr, nr) = isa.preferred_tile();
        let mut cases = Vec::new();
        for (rows, k) in [(mr, 300), (1, 5), (3, 64)] {
            for dist in [64, 1000, 8192] {
                let uk = GemmUkernel {
                    prefetch_b: Some(dist),
                    epilogue: FULL_EPILOGUE,
                    ..GemmUkernel::dense(isa, rows, nr, nr - 1, k)
                };
                cases.push(Case::new(uk, dist as u64 + k as u64));
            }
        }
        run_all(&format!("prefetch/{isa}"), &cases);
        // The stub: callable, touches nothing.
        let region = CodeRegion::new().unwrap();
        let p = region.prefetch().unwrap();
        assert_eq!(region.prefetch().unwrap(), p, "one stub per region");
        region.seal().unwrap();
        let x = [1u8; 64];
        unsafe { region.prefetch_fn(p).unwrap()(x.as_ptr()) };
    }
}

/// Random kernels of every kind against the f64 reference: tile, tails, K, strides, placement,
/// accumulation, epilogue, prefetch, special values; the cases spread over the wide tiers this CPU has.
#[test]
fn random_kernels_match_the_f64_reference() {
    let tiers = wide_tiers("proptest");
    if tiers.is_empty() {
        return; // reported by wide_tiers; `tiers_run_or_are_reported_skipped` fails where AVX2 exists
    }
    let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
    let strategy = (
        0..tiers.len(),
        1usize..=4,
        (0.0f64..1.0, 0.0f64..1.0),
        1usize..300,
        (0usize..20, 0usize..20, 0usize..20),
        (0usize..3, 0usize..3),
        any::<bool>(),
        0usize..16,
        prop::option::of(1usize..4096),
        any::<bool>(),
        any::<u64>(),
    );
    let result = proptest::test_runner::TestRunner::new(config).run(
        &strategy,
        |(tier, nv, (rows_frac, lanes_frac), k, pads, places, accumulate, ep, prefetch, specials, seed)| {
            let isa = tiers[tier];
            let nr = nv * isa.vector_floats();
            let rows = 1 + (rows_frac * isa.max_rows(nr) as f64) as usize;
            let lanes = 1 + (lanes_frac * nr as f64) as usize;
            let place = |p| [Place::AtGuard, Place::Offset(4), Place::Offset(0)][p];
            let uk = GemmUkernel {
                a_row_stride: 4 * (k + pads.0),
                b_k_stride: 4 * (nr + pads.1),
                c_row_stride: 4 * (lanes + pads.2),
                accumulate,
                epilogue: all_epilogues().nth(ep).unwrap(),
                prefetch_b: prefetch.map(|p| p * 4),
                ..GemmUkernel::dense(isa, rows, nr, lanes, k)
            };
            let case = Case { uk, a_place: place(places.0), c_place: place(places.1), specials, seed };
            let region = CodeRegion::new().unwrap();
            let r = region.gemm(&uk).unwrap();
            region.seal().unwrap();
            check(&case, region.gemm_fn(r).unwrap()).map_err(TestCaseError::fail)
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn invalid_descriptions_name_the_field() {
    let ok = GemmUkernel::dense(Isa::Avx512, 14, 32, 32, 64);
    assert!(ok.validate().is_ok());
    let cases: &[(GemmUkernel, &str, &str)] = &[
        (GemmUkernel { isa: Isa::F32x4, nr: 4, rows: 1, lanes: 4, ..ok }, "isa", "found f32x4"),
        (GemmUkernel { nr: 24, ..ok }, "nr", "expected a multiple of 16 floats from 16 to 240 on avx512, found 24"),
        (GemmUkernel { nr: 256, lanes: 1, rows: 1, ..ok }, "nr", "found 256"),
        (GemmUkernel { rows: 15, ..ok }, "rows", "expected 1..=14 for nr = 32 on avx512, found 15"),
        (GemmUkernel { rows: 0, ..ok }, "rows", "found 0"),
        (GemmUkernel { lanes: 0, ..ok }, "lanes", "expected 1..=32 (nr), found 0"),
        (GemmUkernel { lanes: 33, ..ok }, "lanes", "found 33"),
        (GemmUkernel { k: 0, ..ok }, "k", "expected 1..=16777216, found 0"),
        (GemmUkernel { k: MAX_K + 1, ..ok }, "k", "found 16777217"),
        (GemmUkernel { a_row_stride: 6, ..ok }, "a_row_stride", "multiple of 4 bytes, found 6"),
        (GemmUkernel { c_row_stride: 64, ..ok }, "c_row_stride", "expected at least 128 bytes"),
        (GemmUkernel { a_row_stride: 1 << 28, ..ok }, "a_row_stride", "within 2 GiB"),
        (GemmUkernel { b_k_stride: 1 << 30, ..ok }, "b_k_stride", "within 2 GiB"),
        (GemmUkernel { prefetch_b: Some(0), ..ok }, "prefetch_b", "found 0"),
        (GemmUkernel { isa: Isa::Avx2, ..ok }, "rows", "expected 1..=2 for nr = 32 on avx2, found 14"),
    ];
    for (uk, field, text) in cases {
        let msg = uk.validate().expect_err(&format!("{uk:?} must be rejected")).to_string();
        assert!(msg.contains(&format!("`{field}`")) && msg.contains(text), "{uk:?}: {msg}");
    }
    // A region refuses them too, before assembling anything.
    let region = CodeRegion::new().unwrap();
    assert!(region.gemm(&cases[3].0).is_err());
    assert_eq!(region.gemm_count(), 0);
}

#[test]
fn isa_names_parse_and_unsupported_tiers_say_what_is_missing() {
    for isa in Isa::ALL {
        assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        assert_eq!(isa.to_string(), isa.name());
    }
    assert_eq!("auto".parse::<Isa>().unwrap(), Isa::detect());
    let e = "avx-512".parse::<Isa>().unwrap_err().to_string();
    assert_eq!(e, "unknown ISA tier `avx-512`: expected one of avx512, avx2, f32x4, auto");
    assert!(Isa::F32x4.check_supported().is_ok());
    for isa in [Isa::Avx512, Isa::Avx2] {
        match isa.check_supported() {
            Ok(()) => assert!(isa.required_features().iter().all(|f| cpu_has(f))),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("ISA tier `{isa}` is not available here: it needs the CPU features")),
                    "{msg}"
                );
                println!("{msg}");
            }
        }
    }
    assert_eq!(Isa::Avx512.max_rows(32), 14);
    assert_eq!(Isa::Avx512.max_rows(64), 6);
    assert_eq!(Isa::Avx512.max_rows(48), 9);
    assert_eq!(Isa::Avx2.max_rows(16), 6);
    assert_eq!(Isa::Avx2.max_rows(12), 0);
    assert_eq!(Isa::F32x4.max_rows(4), 0);
}

#[test]
fn region_caches_seals_and_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CodeRegion>();
    let Some(isa) = wide_tiers("region").first().copied() else { return };
    let region = std::sync::Arc::new(CodeRegion::new().unwrap());
    let uk = GemmUkernel::dense(isa, 2, isa.vector_floats(), 3, 5);
    let r = region.gemm(&uk).unwrap();
    assert_eq!(region.gemm(&uk).unwrap(), r, "assembled once");
    assert_eq!(region.gemm_count(), 1);
    let e = region.gemm_fn(r).unwrap_err().to_string();
    assert!(e.contains("not executable yet: call CodeRegion::seal first"), "{e}");
    region.seal().unwrap();
    region.gemm_fn(r).unwrap();
    // A kernel added after sealing lands on a fresh page and needs its own seal.
    let uk2 = GemmUkernel { k: 6, ..uk };
    let r2 = region.gemm(&uk2).unwrap();
    assert_eq!(r2.addr() % 4096, 0);
    assert!(region.gemm_fn(r2).is_err());
    region.seal().unwrap();
    // Kernels called from several threads while another one is added.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let region = region.clone();
            std::thread::spawn(move || {
                // One kernel of its own, one shared by all threads (assembled by whichever comes first).
                for uk in [GemmUkernel { k: 10 + t, ..uk }, GemmUkernel { k: 9, ..uk }] {
                    let r = region.gemm(&uk).unwrap();
                    region.seal().unwrap();
                    check(&Case::new(uk, t as u64), region.gemm_fn(r).unwrap()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // A full region is an error naming the limit.
    let small = CodeRegion::with_capacity(4096).unwrap();
    let big = GemmUkernel::dense(
        isa,
        isa.max_rows(2 * isa.vector_floats()),
        2 * isa.vector_floats(),
        2 * isa.vector_floats(),
        4000,
    );
    let mut err = None;
    for k in 7..100 {
        if let Err(e) = small.gemm(&GemmUkernel { k, ..big }) {
            err = Some(e.to_string());
            break;
        }
    }
    let err = err.expect("a 4 KiB region fills up");
    assert!(err.contains("full: 4096 bytes of kernels reserved"), "{err}");
}

#[test]
fn fma_peak_is_measured_on_each_tier() {
    for isa in wide_tiers("fma_peak") {
        let g = fma_peak_gflops(isa).unwrap();
        println!("{isa}: {g:.1} GFLOP/s");
        assert!(g > 1.0 && g < 10_000.0, "{isa}: {g}");
    }
}

/// The disassembly of a small AVX2 kernel (2 rows, 5 of 8 lanes, K = 3, bias + relu, accumulating): every
/// part of the contract visible — masked C loads, unrolled K, masked epilogue, vzeroupper.
#[test]
fn golden_disassembly_of_a_small_kernel() {
    let uk = GemmUkernel {
        epilogue: Epilogue { bias: true, relu: true, ..Epilogue::NONE },
        accumulate: true,
        ..GemmUkernel::dense(Isa::Avx2, 2, 8, 5, 3)
    };
    let text = disassemble(&assemble_gemm(&uk, 0x1000).unwrap(), 0x1000);
    let golden = include_str!("golden_avx2_2x8_l5_k3.asm");
    assert_eq!(text, golden, "got:\n{text}");
    // And an AVX-512 one with the embedded broadcast (assembling needs no AVX-512 CPU).
    let uk = GemmUkernel { prefetch_b: Some(256), ..GemmUkernel::dense(Isa::Avx512, 2, 16, 16, 2) };
    let text = disassemble(&assemble_gemm(&uk, 0x2000).unwrap(), 0x2000);
    let golden = include_str!("golden_avx512_2x16_k2.asm");
    assert_eq!(text, golden, "got:\n{text}");
}

/// The integration path the conv kernels will take: cranelift code calls a kernel through `call_indirect` on
/// its absolute address (SystemV), and the prefetch stub the same way with the `preserve_all` convention;
/// an f32x4 value live across both calls survives (the stub clobbers nothing, cranelift saves it around the
/// kernel), and the results are the kernel's.
#[test]
fn cranelift_code_calls_kernels_by_address() {
    use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, Signature};
    use cranelift_codegen::isa::CallConv;
    use cranelift_codegen::settings::{self, Configurable};
    use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
    use cranelift_jit::{JITBuilder, JITModule};
    use cranelift_module::{default_libcall_names, Linkage, Module};

    for isa in wide_tiers("cranelift_call") {
        let vw = isa.vector_floats();
        let region = CodeRegion::new().unwrap();
        let uk = GemmUkernel { epilogue: FULL_EPILOGUE, ..GemmUkernel::dense(isa, 3, 2 * vw, vw + 3, 20) };
        let k = region.gemm(&uk).unwrap();
        let pf = region.prefetch().unwrap();
        region.seal().unwrap();

        let mut flags = settings::builder();
        flags.set("opt_level", "speed").unwrap();
        let target = cranelift_native::builder().unwrap().finish(settings::Flags::new(flags)).unwrap();
        let mut module = JITModule::new(JITBuilder::with_isa(target, default_libcall_names()));
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let mut kernel_sig = Signature::new(CallConv::SystemV);
        kernel_sig.params.extend([AbiParam::new(types::I64); 5]);
        let mut pf_sig = Signature::new(CallConv::PreserveAll);
        pf_sig.params.push(AbiParam::new(types::I64));

        // f(x, a, b, c, bias, res): v = x[0..4]; prefetch(b); kernel(a, b, c, bias, res); x[0..4] = v + v.
        let mut sig = Signature::new(CallConv::SystemV);
        sig.params.extend([AbiParam::new(types::I64); 6]);
        let id = module.declare_function("calls_kernel", Linkage::Local, &sig).unwrap();
        ctx.func.signature = sig;
        let fcfg = module.target_config();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let blk = b.create_block();
            b.append_block_params_for_function_params(blk);
            b.switch_to_block(blk);
            b.seal_block(blk);
            let p = b.block_params(blk).to_vec();
            let v = b.ins().load(types::F32X4, MemFlagsData::trusted(), p[0], 0);
            let pf_ref = b.import_signature(pf_sig);
            let pf_addr = b.ins().iconst(types::I64, pf.addr() as i64);
            b.ins().call_indirect(pf_ref, pf_addr, &[p[2]]);
            let k_ref = b.import_signature(kernel_sig);
            let k_addr = b.ins().iconst(types::I64, k.addr() as i64);
            b.ins().call_indirect(k_ref, k_addr, &p[1..]);
            let w = b.ins().fadd(v, v);
            b.ins().store(MemFlagsData::trusted(), w, p[0], 0);
            b.ins().return_(&[]);
            b.finalize(fcfg);
        }
        module.define_function(id, &mut ctx).unwrap();
        module.clear_context(&mut ctx);
        module.finalize_definitions().unwrap();
        type Outer = unsafe extern "sysv64" fn(*mut f32, *const f32, *const f32, *mut f32, *const f32, *const f32);
        // SAFETY: the function just defined, with this signature.
        let outer = unsafe { std::mem::transmute::<*const u8, Outer>(module.get_finalized_function(id)) };

        // Through the outer function, the kernel's results match the reference (a GemmFn-shaped closure is
        // not possible, so `check` gets a trampoline reading the outer function from a thread-local).
        thread_local! {
            static OUTER: std::cell::Cell<Option<Outer>> = const { std::cell::Cell::new(None) };
            static X: std::cell::RefCell<[f32; 4]> = const { std::cell::RefCell::new([0.0; 4]) };
        }
        unsafe extern "sysv64" fn trampoline(
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            bias: *const f32,
            r: *const f32,
        ) {
            let outer = OUTER.with(|o| o.get()).unwrap();
            X.with(|x| unsafe { outer(x.borrow_mut().as_mut_ptr(), a, b, c, bias, r) });
        }
        OUTER.with(|o| o.set(Some(outer)));
        X.with(|x| *x.borrow_mut() = [1.5, -2.0, f32::INFINITY, 0.25]);
        check(&Case::new(uk, 5), trampoline).unwrap_or_else(|e| panic!("{isa}: {e}"));
        assert_eq!(X.with(|x| *x.borrow()), [3.0, -4.0, f32::INFINITY, 0.5], "{isa}: the live f32x4 was clobbered");
        // SAFETY: no code of the module runs any more.
        unsafe { module.free_memory() };
    }
}
