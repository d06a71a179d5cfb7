//! Diagnostics: every error or warning a user can cause, with the place in the spec it points at.
//!
//! Front-end stages push [`Diagnostic`]s into a [`Diagnostics`] list instead of stopping at the first
//! problem, so a user sees everything that is wrong with a spec at once. Display is rustc style:
//! `FILE:LINE:COL: error: message`, followed by indented `note:` lines.

use std::fmt;
use std::sync::Arc;

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
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.loc {
            write!(f, "{loc}: ")?;
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.message)?;
        for n in &self.notes {
            write!(f, "\n  = note: {n}")?;
        }
        Ok(())
    }
}

/// An ordered collection of diagnostics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d)
    }
    pub fn error(&mut self, loc: Option<&Loc>, message: impl Into<String>) {
        self.0.push(Diagnostic::error(loc.cloned(), message))
    }
    pub fn warning(&mut self, loc: Option<&Loc>, message: impl Into<String>) {
        self.0.push(Diagnostic::warning(loc.cloned(), message))
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0)
    }
    /// Sort by file position so that messages read top to bottom, errors and warnings interleaved.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            let ka = a.loc.as_ref().map(|l| (l.file.clone(), l.line, l.col));
            let kb = b.loc.as_ref().map(|l| (l.file.clone(), l.line, l.col));
            ka.cmp(&kb)
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

/// Closest candidate by edit distance, for "did you mean" hints (None if nothing is close).
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&word.to_lowercase(), &c.to_lowercase());
        let limit = (c.len().max(word.len()) / 3).max(1);
        let prefix = c.starts_with(word) || word.starts_with(c);
        if (d <= limit || (prefix && word.len() >= 3)) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions of two
/// neighbouring characters each cost 1 (so `frist` is one edit from `first`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, x) in d[0].iter_mut().enumerate() {
        *x = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j - 1] + cost).min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
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
    }

    #[test]
    fn display_is_rustc_style() {
        let file: Arc<str> = "a.yaml".into();
        let d = Diagnostic::error(Some(Loc::new(&file, 3, 7)), "bad").note("why");
        assert_eq!(d.to_string(), "a.yaml:3:7: error: bad\n  = note: why");
    }
}
