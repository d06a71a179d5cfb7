//! Diagnostics: every error or warning a user can cause, with the place in the spec it points at.
//!
//! Front-end stages push [`Diagnostic`]s into a [`Diagnostics`] list instead of stopping at the first
//! problem, so a user sees everything that is wrong with a spec at once. Display is rustc style:
//! `FILE:LINE:COL: error: message`, followed by indented `note:` lines.
//!
//! The list is bounded: past [`MAX_REPORTED`] errors (or warnings) further ones are only counted, in
//! one closing note, so that a spec with thousands of mistakes costs linear time and a screenful of
//! output. [`Repeats`] merges one mistake that recurs in many block instances into one message.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// How many errors, and separately how many warnings, are kept in full; the rest are counted.
pub const MAX_REPORTED: usize = 100;

/// A position in a source file (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl Loc {
    pub fn new(file: &Arc<str>, line: u32, col: u32) -> Loc {
        Loc { file: file.clone(), line: line.max(1), col: col.max(1) }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    /// The closing note of a list that reached [`MAX_REPORTED`]: how many errors and warnings were
    /// found beyond it and not kept.
    Omitted {
        errors: usize,
        warnings: usize,
    },
}

/// One message for the user.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Where it points; `None` only for problems that belong to no place in a file (e.g. a weights file).
    pub loc: Option<Loc>,
    pub message: String,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(loc: Option<Loc>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, loc, message: message.into(), notes: vec![] }
    }
    pub fn warning(loc: Option<Loc>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, loc, message: message.into(), notes: vec![] }
    }
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.loc {
            write!(f, "{loc}: ")?;
        }
        match self.severity {
            Severity::Error => write!(f, "error: {}", self.message)?,
            Severity::Warning => write!(f, "warning: {}", self.message)?,
            Severity::Omitted { errors, warnings } => {
                let mut parts = vec![];
                if errors > 0 {
                    parts.push(format!("{errors} more error(s)"));
                }
                if warnings > 0 {
                    parts.push(format!("{warnings} more warning(s)"));
                }
                write!(
                    f,
                    "note: {} not shown: only the first {MAX_REPORTED} errors and {MAX_REPORTED} warnings are \
                     reported in full (fix these and check again)",
                    parts.join(" and ")
                )?;
            }
        }
        for n in &self.notes {
            write!(f, "\n  = note: {n}")?;
        }
        Ok(())
    }
}

/// An ordered, bounded collection of diagnostics (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Adds `d`, or counts it in the closing note when [`MAX_REPORTED`] of its kind are kept already.
    pub fn push(&mut self, d: Diagnostic) {
        self.keep(d);
    }

    /// [`Diagnostics::push`], returning the index `d` is kept at. The list never holds more than
    /// 2 * MAX_REPORTED + 1 entries, so the counting scan is bounded.
    fn keep(&mut self, d: Diagnostic) -> Option<usize> {
        let kept = |s: fn(&Diagnostic) -> bool| self.0.iter().filter(|x| s(x)).count();
        let full = match d.severity {
            Severity::Error => kept(Diagnostic::is_error) >= MAX_REPORTED,
            Severity::Warning => kept(Diagnostic::is_warning) >= MAX_REPORTED,
            Severity::Omitted { .. } => true,
        };
        if !full {
            self.0.push(d);
            return Some(self.0.len() - 1);
        }
        let (e, w) = match d.severity {
            Severity::Error => (1, 0),
            Severity::Warning => (0, 1),
            Severity::Omitted { errors, warnings } => (errors, warnings),
        };
        match self.0.iter_mut().find_map(|x| match &mut x.severity {
            Severity::Omitted { errors, warnings } => Some((errors, warnings)),
            _ => None,
        }) {
            Some((errors, warnings)) => {
                *errors += e;
                *warnings += w;
            }
            None => self.0.push(Diagnostic {
                severity: Severity::Omitted { errors: e, warnings: w },
                loc: None,
                message: String::new(),
                notes: vec![],
            }),
        }
        None
    }
    pub fn error(&mut self, loc: Option<&Loc>, message: impl Into<String>) {
        self.push(Diagnostic::error(loc.cloned(), message));
    }
    pub fn warning(&mut self, loc: Option<&Loc>, message: impl Into<String>) {
        self.push(Diagnostic::warning(loc.cloned(), message));
    }
    /// True when errors are kept in full no more: work spent on a new error's message (a "did you
    /// mean" search) is wasted.
    pub fn is_full(&self) -> bool {
        self.0.iter().filter(|d| d.is_error()).count() >= MAX_REPORTED
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }
    /// The errors kept in full.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    /// The warnings kept in full.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_warning())
    }
    /// Every error found, those only counted included.
    pub fn error_count(&self) -> usize {
        self.errors().count() + self.omitted().0
    }
    /// Every warning found, those only counted included.
    pub fn warning_count(&self) -> usize {
        self.warnings().count() + self.omitted().1
    }
    fn omitted(&self) -> (usize, usize) {
        self.0
            .iter()
            .find_map(|d| match d.severity {
                Severity::Omitted { errors, warnings } => Some((errors, warnings)),
                _ => None,
            })
            .unwrap_or((0, 0))
    }
    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.0 {
            self.push(d);
        }
    }
    /// Sort by file position so that messages read top to bottom, errors and warnings interleaved; the
    /// count of those not shown comes last.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                (
                    matches!(d.severity, Severity::Omitted { .. }),
                    d.loc.as_ref().map(|l| (l.file.clone(), l.line, l.col)),
                )
            };
            key(a).cmp(&key(b))
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Merges a mistake that recurs at one place — inside a block that is used many times — into its first
/// report, which then names the other instances in a note, instead of printing it once per instance.
#[derive(Debug, Default)]
pub struct Repeats {
    /// (place, what identifies the mistake) → where its report is kept, and the other instances.
    seen: HashMap<(Option<Loc>, String), Seen>,
}

#[derive(Debug)]
struct Seen {
    /// Index of the kept diagnostic (None when it was only counted, past [`MAX_REPORTED`]).
    at: Option<usize>,
    /// The first few other instances, described.
    listed: Vec<String>,
    /// How many other instances there are.
    count: usize,
}

/// Instances listed in full in the "also in" note; the rest are counted.
const LISTED_INSTANCES: usize = 4;

impl Repeats {
    /// Reports a mistake made inside a block instance: the first time `key` (what identifies the mistake,
    /// without names that differ per instance) is seen at `loc`, pushes `make()`; later, only records
    /// the instance (`describe` is called for the first few). Outside blocks (`describe` None) every
    /// report is pushed. Returns whether a diagnostic was pushed.
    pub fn report(
        &mut self,
        diags: &mut Diagnostics,
        loc: Option<&Loc>,
        key: &str,
        describe: Option<&dyn Fn() -> String>,
        make: impl FnOnce() -> Diagnostic,
    ) -> bool {
        let Some(describe) = describe else {
            diags.push(make());
            return true;
        };
        let k = (loc.cloned(), key.to_string());
        if let Some(seen) = self.seen.get_mut(&k) {
            if seen.listed.len() < LISTED_INSTANCES {
                seen.listed.push(describe());
            }
            seen.count += 1;
            return false;
        }
        let at = diags.keep(make());
        self.seen.insert(k, Seen { at, listed: vec![], count: 0 });
        true
    }

    /// Adds the "also in" notes to the kept diagnostics; call before `diags` is sorted.
    pub fn finish(self, diags: &mut Diagnostics) {
        for seen in self.seen.into_values() {
            let (Some(at), true) = (seen.at, seen.count > 0) else { continue };
            let more = seen.count - seen.listed.len();
            let more = if more > 0 { format!("; and {more} more") } else { String::new() };
            if let Some(d) = diags.0.get_mut(at) {
                d.notes.push(format!(
                    "the same error in {} more instance(s): {}{more}",
                    seen.count,
                    seen.listed.join("; ")
                ));
            }
        }
    }
}

/// User text as messages show it: control characters escaped, and cut to 80 characters (a 100 KB name
/// must not make a 100 KB message).
pub fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 80;
    if s.len() <= MAX && !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::new();
    for c in s.chars().take(MAX) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(MAX).is_some() {
        out.push_str(&format!("... ({} bytes)", s.len()));
    }
    std::borrow::Cow::Owned(out)
}

/// Words longer than this get no "did you mean" (nobody mistypes a 65-character name by a few letters;
/// comparing long strings would cost time on hostile input).
const SUGGEST_MAX_LEN: usize = 64;
/// Edit-distance cells one suggestion may compute (~1 ms): over a huge candidate list the search stops
/// with the best found so far.
const SUGGEST_BUDGET: usize = 1 << 20;

/// Closest candidate by edit distance, for "did you mean" hints (None if nothing is close). A candidate
/// is close when it is within a third of the longer word's length, or when one word starts with the
/// other (of at least 3 letters). Bounded work: candidates whose length differs by more than that are
/// skipped without comparing, distances are computed in a band, and the search has a budget.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w: Vec<char> = word.chars().flat_map(char::to_lowercase).collect();
    if w.len() > SUGGEST_MAX_LEN {
        return None;
    }
    let mut budget = SUGGEST_BUDGET;
    let mut best: Option<(usize, &str)> = None;
    let (mut c_lower, mut rows) = (Vec::new(), Vec::new());
    for c in candidates {
        if c.len() > 4 * SUGGEST_MAX_LEN {
            continue;
        }
        let prefix = word.len() >= 3 && (c.starts_with(word) || word.starts_with(c));
        let cl = c.chars().count();
        let limit = (cl.max(w.len()) / 3).max(1);
        let d = if prefix {
            // One word extends the other: the distance is the length difference.
            Some(cl.abs_diff(w.len()))
        } else if cl.abs_diff(w.len()) > limit || cl > SUGGEST_MAX_LEN {
            None
        } else {
            let cost = w.len().max(1) * (2 * limit + 1);
            if cost > budget {
                break;
            }
            budget -= cost;
            c_lower.clear();
            c_lower.extend(c.chars().flat_map(char::to_lowercase));
            banded_distance(&w, &c_lower, limit, &mut rows)
        };
        if let Some(d) = d {
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, c));
            }
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance when it is at most `limit`, else None: insertions, deletions,
/// substitutions and transpositions of two neighbouring characters each cost 1 (so `frist` is one edit
/// from `first`). Only cells within `limit` of the diagonal are computed; the rest are "too far".
/// `rows` is scratch space, reused between calls.
fn banded_distance(a: &[char], b: &[char], limit: usize, rows: &mut Vec<usize>) -> Option<usize> {
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let far = limit + 1;
    let width = b.len() + 1;
    // Three rolling rows (i-2, i-1, i), side by side.
    rows.clear();
    rows.resize(3 * width, far);
    for (j, x) in rows[..width].iter_mut().enumerate().take(limit.min(b.len()) + 1) {
        *x = j;
    }
    for i in 1..=a.len() {
        let (lo, hi) = (i.saturating_sub(limit).max(1), (i + limit).min(b.len()));
        let (cur, prev, prev2) = ((i % 3) * width, ((i + 2) % 3) * width, ((i + 1) % 3) * width);
        rows[cur..cur + width].fill(far);
        if i <= limit {
            rows[cur] = i;
        }
        let mut row_min = rows[cur];
        for j in lo..=hi {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (rows[prev + j - 1] + cost).min(rows[prev + j] + 1).min(rows[cur + j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(rows[prev2 + j - 2] + 1);
            }
            rows[cur + j] = v.min(far);
            row_min = row_min.min(rows[cur + j]);
        }
        if row_min > limit {
            return None;
        }
    }
    let d = rows[(a.len() % 3) * width + b.len()];
    (d <= limit).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("conv2", ["conv", "dense", "relu"]), Some("conv"));
        assert_eq!(did_you_mean("filtres", ["filters", "kernel"]), Some("filters"));
        assert_eq!(did_you_mean("zzz", ["filters", "kernel"]), None);
        // Swapped neighbours are one edit.
        assert_eq!(did_you_mean("frist", ["first", "second"]), Some("first"));
        assert_eq!(did_you_mean("reul", ["relu", "input"]), Some("relu"));
        assert_eq!(did_you_mean("unti", ["unit"]), Some("unit"));
        // The closest wins, whatever the order.
        assert_eq!(did_you_mean("res2a_branch2c", ["res2a_branch2b", "res2a_branch2c_x"]), Some("res2a_branch2b"));
        assert_eq!(did_you_mean("res2a_branch2x", ["res2b_branch2y", "res2a_branch2b"]), Some("res2a_branch2b"));
    }

    #[test]
    fn banded_distance_agrees_with_the_full_matrix() {
        fn full(a: &[char], b: &[char]) -> usize {
            let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
            for (i, row) in d.iter_mut().enumerate() {
                row[0] = i;
            }
            for (j, x) in d[0].iter_mut().enumerate() {
                *x = j;
            }
            for i in 1..=a.len() {
                for j in 1..=b.len() {
                    let c = usize::from(a[i - 1] != b[j - 1]);
                    let mut v = (d[i - 1][j - 1] + c).min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
                    if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                        v = v.min(d[i - 2][j - 2] + 1);
                    }
                    d[i][j] = v;
                }
            }
            d[a.len()][b.len()]
        }
        let words = ["", "a", "ab", "ba", "abc", "acb", "conv", "cnov", "relu", "reul", "batch_norm", "bacth_nrom"];
        for x in words {
            for y in words {
                let (a, b): (Vec<char>, Vec<char>) = (x.chars().collect(), y.chars().collect());
                let want = full(&a, &b);
                for limit in 1..6 {
                    let got = banded_distance(&a, &b, limit, &mut vec![]);
                    assert_eq!(got, (want <= limit).then_some(want), "{x} / {y} limit {limit}");
                }
            }
        }
    }

    #[test]
    fn suggestions_are_bounded_work() {
        // A long word gets no suggestion at all; a huge list is searched within the budget.
        let long = "a".repeat(100_000);
        assert_eq!(did_you_mean(&long, [long.as_str()]), None);
        let names: Vec<String> = (0..200_000).map(|i| format!("node_{i:08}")).collect();
        let t = std::time::Instant::now();
        let _ = did_you_mean("node_x0000001", names.iter().map(|s| s.as_str()));
        assert!(t.elapsed().as_secs_f64() < 5.0);
    }

    #[test]
    fn display_is_rustc_style() {
        let file: Arc<str> = "a.yaml".into();
        let d = Diagnostic::error(Some(Loc::new(&file, 3, 7)), "bad").note("why");
        assert_eq!(d.to_string(), "a.yaml:3:7: error: bad\n  = note: why");
    }

    #[test]
    fn past_the_limit_errors_are_counted() {
        let file: Arc<str> = "a.yaml".into();
        let mut d = Diagnostics::default();
        for i in 0..MAX_REPORTED as u32 + 50 {
            d.error(Some(&Loc::new(&file, i + 1, 1)), "bad");
            d.warning(Some(&Loc::new(&file, i + 1, 2)), "odd");
        }
        assert_eq!(d.errors().count(), MAX_REPORTED);
        assert_eq!(d.error_count(), MAX_REPORTED + 50);
        assert_eq!(d.warning_count(), MAX_REPORTED + 50);
        assert!(d.is_full());
        d.sort();
        let last = d.0.last().unwrap().to_string();
        assert!(last.starts_with("note: 50 more error(s) and 50 more warning(s) not shown"), "{last}");
        let mut e = Diagnostics::default();
        e.extend(d.clone());
        e.extend(d);
        assert_eq!(e.error_count(), 2 * (MAX_REPORTED + 50));
    }

    #[test]
    fn repeats_are_merged() {
        let file: Arc<str> = "a.yaml".into();
        let (mut d, mut r) = (Diagnostics::default(), Repeats::default());
        let loc = Loc::new(&file, 3, 7);
        for i in 0..8 {
            let e = || Diagnostic::error(Some(loc.clone()), format!("bad in node n{i}"));
            let describe = || format!("`b` used at a.yaml:9:5 (repetition {} of 8)", i + 1);
            assert_eq!(r.report(&mut d, Some(&loc), "bad", Some(&describe), e), i == 0);
        }
        r.finish(&mut d);
        assert_eq!(d.0.len(), 1);
        assert_eq!(d.0[0].message, "bad in node n0");
        assert_eq!(
            d.0[0].notes,
            ["the same error in 7 more instance(s): `b` used at a.yaml:9:5 (repetition 2 of 8); `b` used at \
              a.yaml:9:5 (repetition 3 of 8); `b` used at a.yaml:9:5 (repetition 4 of 8); `b` used at a.yaml:9:5 \
              (repetition 5 of 8); and 3 more"]
        );
    }
}
