//! A YAML document as a tree of values that remember where they were written.
//!
//! serde-saphyr parses the text (and reports syntax errors with their line and column); we keep the
//! document loosely typed here, as [`YNode`]s carrying a [`Loc`], because blocks are templates whose
//! fields only get their types after parameters are substituted, and because checking fields ourselves
//! lets the spec stage report every problem at once rather than serde's first one.

use crate::diag::{Diagnostic, Loc};
use crate::report::thousands;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;
use std::sync::Arc;

/// A YAML value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct YNode {
    pub loc: Loc,
    pub value: YValue,
}

#[derive(Clone, Debug, PartialEq)]
pub enum YValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<YNode>),
    /// Keys are kept in document order (the spec's node order matters).
    Map(Vec<(YNode, YNode)>),
}

impl YValue {
    /// The name of this value's kind, as used in "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            YValue::Null => "nothing (null)",
            YValue::Bool(_) => "a boolean",
            YValue::Int(_) => "an integer",
            YValue::Float(_) => "a number",
            YValue::Str(_) => "a string",
            YValue::Seq(_) => "a list",
            YValue::Map(_) => "a mapping",
        }
    }
}

impl YValue {
    /// The value for "found X" in messages: its kind and, briefly, the value itself
    /// (`the string "abc"`, `the list [1, 2, 3]`, `the integer -1`).
    pub fn describe(&self) -> String {
        // At most 40 characters of the value, without formatting a huge one in full.
        struct Capped(String);
        impl fmt::Write for Capped {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    if self.0.chars().count() >= 40 {
                        return Err(fmt::Error);
                    }
                    self.0.push(c);
                }
                Ok(())
            }
        }
        let mut capped = Capped(String::new());
        let mut text = match fmt::write(&mut capped, format_args!("{self}")) {
            Ok(()) => capped.0,
            Err(_) => capped.0.chars().take(37).collect::<String>() + "...",
        };
        if text.chars().any(char::is_control) {
            text = text.chars().flat_map(char::escape_debug).collect();
        }
        match self {
            YValue::Null => "nothing (null)".into(),
            YValue::Bool(b) => format!("the boolean {b}"),
            YValue::Int(i) => format!("the integer {i}"),
            YValue::Float(x) if x.fract() == 0.0 => format!("the float {x:?}"),
            YValue::Float(_) => format!("the number {text}"),
            YValue::Str(s) if s.is_empty() => "an empty string".into(),
            YValue::Str(_) => format!("the string {text}"),
            YValue::Seq(v) if v.is_empty() => "an empty list".into(),
            YValue::Seq(_) => format!("the list {text}"),
            YValue::Map(m) => match m.as_slice() {
                // `filters: {filters}` without quotes: YAML reads a mapping.
                [(k, YNode { value: YValue::Null, .. })] if k.as_str().is_some() => format!(
                    "the mapping {text} (an unquoted template: write \"{{{}}}\"; YAML reads `{{...}}` as a mapping)",
                    k.as_str().unwrap_or_default()
                ),
                _ => format!("the mapping {text}"),
            },
        }
    }
}

impl fmt::Display for YValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            YValue::Null => write!(f, "null"),
            YValue::Bool(b) => write!(f, "{b}"),
            YValue::Int(i) => write!(f, "{i}"),
            YValue::Float(x) => write!(f, "{x}"),
            YValue::Str(s) => write!(f, "{s:?}"),
            YValue::Seq(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", x.value)?;
                }
                write!(f, "]")
            }
            YValue::Map(m) => {
                write!(f, "{{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}: {}", k.value, v.value)?;
                }
                write!(f, "}}")
            }
        }
    }
}

impl YNode {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            YValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_map(&self) -> Option<&[(YNode, YNode)]> {
        match &self.value {
            YValue::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_seq(&self) -> Option<&[YNode]> {
        match &self.value {
            YValue::Seq(s) => Some(s),
            _ => None,
        }
    }
    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&YNode> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }
}

/// What serde-saphyr gives us: a value and the location it was referenced at.
struct Raw(YValueRaw);
enum YValueRaw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw(YValueRaw::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw(YValueRaw::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                // Numbers past i64 are absurd for any field of ours; keep them so the checker can say so.
                Ok(Raw(i64::try_from(v).map(YValueRaw::Int).unwrap_or(YValueRaw::Float(v as f64))))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
                Ok(Raw(i64::try_from(v).map(YValueRaw::Int).unwrap_or(YValueRaw::Float(v as f64))))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
                Ok(Raw(i64::try_from(v).map(YValueRaw::Int).unwrap_or(YValueRaw::Float(v as f64))))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw(YValueRaw::Float(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw(YValueRaw::Str(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw(YValueRaw::Str(v)))
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw(YValueRaw::Null))
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw(YValueRaw::Null))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Raw, D2::Error> {
                Raw::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Raw(YValueRaw::Seq(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = a.next_key()? {
                    let x = a.next_value()?;
                    v.push((k, x));
                }
                Ok(Raw(YValueRaw::Map(v)))
            }
        }
        d.deserialize_any(V)
    }
}

fn convert(file: &Arc<str>, s: Spanned<Raw>) -> YNode {
    let loc = Loc::new(file, s.referenced.line() as u32, s.referenced.column() as u32);
    let value = match s.value.0 {
        YValueRaw::Null => YValue::Null,
        YValueRaw::Bool(b) => YValue::Bool(b),
        YValueRaw::Int(i) => YValue::Int(i),
        YValueRaw::Float(x) => YValue::Float(x),
        YValueRaw::Str(x) => YValue::Str(x),
        YValueRaw::Seq(v) => YValue::Seq(v.into_iter().map(|x| convert(file, x)).collect()),
        YValueRaw::Map(m) => YValue::Map(m.into_iter().map(|(k, v)| (convert(file, k), convert(file, v))).collect()),
    };
    YNode { loc, value }
}

/// Parses YAML text. `file` names the source in locations. Syntax errors, empty documents and text that
/// is not UTF-8 become a located diagnostic, never a panic.
pub fn parse(file: &Arc<str>, bytes: &[u8]) -> Result<YNode, Diagnostic> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // Point at the first bad byte.
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
            let col = good.iter().rev().take_while(|&&b| b != b'\n').count() as u32 + 1;
            return Err(Diagnostic::error(
                Some(Loc::new(file, line, col)),
                "this file is not a YAML spec: it is not UTF-8 text (is it a binary file?)",
            ));
        }
    };
    if text.contains('\0') {
        return Err(Diagnostic::error(
            Some(Loc::new(file, 1, 1)),
            "this file is not a YAML spec: it contains NUL bytes (is it a binary file?)",
        ));
    }
    if text.trim().lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Err(Diagnostic::error(
            Some(Loc::new(file, 1, 1)),
            "the spec is empty: expected a mapping with at least `input` and `layers`",
        ));
    }
    // YAML 1.2 booleans only: `n`, `y`, `no`, `on`... are names here (a block parameter `n`), not booleans.
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(v) => Ok(convert(file, v)),
        Err(e) => Err(syntax_error(file, text, &e)),
    }
}

/// A YAML error as a located diagnostic: serde-saphyr's message without its own location text, a
/// resource limit of the parser named as such, a tab in the indentation pointed at where it is, and a
/// hint when an unquoted template is the likely cause.
fn syntax_error(file: &Arc<str>, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let (line, col) = e.location().map(|l| (l.line() as u32, l.column() as u32)).unwrap_or((1, 1));
    if let Some(d) = budget_error(file, e, line, col) {
        return d;
    }
    if let Some(tab) = tab_in_indentation(text, line) {
        return Diagnostic::error(
            Some(Loc::new(file, tab.0, tab.1)),
            "invalid YAML: a tab in the indentation (YAML indents with spaces only)",
        );
    }
    let full = e.without_snippet().to_string();
    let first = full.lines().next().unwrap_or("").trim();
    // serde-saphyr prefixes "error: line L column C: " and may end with " at line L, column C"; we print
    // the location ourselves.
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    let msg = match msg.find(": ") {
        Some(i) if msg.starts_with("line ") => &msg[i + 2..],
        _ => msg,
    };
    let msg = msg.strip_suffix(&format!(" at line {line}, column {col}")).unwrap_or(msg);
    let msg = msg.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    let msg = if msg == "recursion limit exceeded" {
        "collections are nested too deeply (the YAML parser allows 64 levels)".to_string()
    } else {
        msg
    };
    let mut d = Diagnostic::error(Some(Loc::new(file, line, col)), format!("invalid YAML: {msg}"));
    if let Some(t) = unquoted_template(text, line) {
        d = d.note(format!("templates must be quoted: write \"{t}\" (unquoted, YAML reads `{{` as a mapping)"));
    }
    d
}

/// The parser's resource limits (serde-saphyr's default budget: 250,000 YAML values, 64 levels of
/// nesting, aliases), named in plain words.
fn budget_error(file: &Arc<str>, e: &serde_saphyr::Error, line: u32, col: u32) -> Option<Diagnostic> {
    use serde_saphyr::budget::BudgetBreach as B;
    let mut e = e;
    while let serde_saphyr::Error::AliasError { error, .. } | serde_saphyr::Error::WithSnippet { error, .. } = e {
        e = error;
    }
    let serde_saphyr::Error::Budget { breach, .. } = e else { return None };
    let b = serde_saphyr::Budget::default();
    let what = match breach {
        B::Nodes { .. } => format!("the spec has more than {} YAML values", thousands(b.max_nodes as u64)),
        B::Events { .. } => format!("the spec has more than {} YAML parser events", thousands(b.max_events as u64)),
        B::Depth { .. } => format!("collections are nested more than {} levels deep", b.max_depth),
        B::Aliases { .. } | B::Anchors { .. } | B::AliasAnchorRatio { .. } => {
            "the spec uses too many YAML aliases (`*name`) or anchors (`&name`)".to_string()
        }
        B::RecordedAnchorEvents { .. } | B::RecordedAnchorBytes { .. } => {
            "the YAML anchors (`&name`) hold too much to be repeated by aliases".to_string()
        }
        B::ScalarBytes { .. } => {
            format!("the spec's strings total more than {} bytes", thousands(b.max_total_scalar_bytes as u64))
        }
        B::Documents { .. } => format!("the file has more than {} YAML documents", b.max_documents),
        other => format!("{other:?}"),
    };
    Some(Diagnostic::error(
        Some(Loc::new(file, line, col)),
        format!("invalid YAML: {what} (the YAML parser's limit, which no real spec reaches)"),
    ))
}

/// The first tab in the leading whitespace of line `line` or the line after it (1-based line and
/// column): YAML reports a tab where the token before it started, which may be the line before.
fn tab_in_indentation(text: &str, line: u32) -> Option<(u32, u32)> {
    let first = line.saturating_sub(1) as usize;
    for (i, l) in text.lines().enumerate().skip(first).take(2) {
        let indent = l.len() - l.trim_start_matches([' ', '\t']).len();
        if let Some(c) = l[..indent].find('\t') {
            if !l.trim().is_empty() {
                return Some((i as u32 + 1, c as u32 + 1));
            }
        }
    }
    None
}

/// An unquoted template on line `line` (`name: res{stage}a`, `filters: {filters[0]}`): the scalar that
/// should have been quoted.
fn unquoted_template(text: &str, line: u32) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)? as usize)?;
    if l.contains(['"', '\'']) {
        return None;
    }
    let b = l.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        // `x{` (a word before a brace) or `{x[` / `{x+`: not YAML, a template.
        let after: Vec<u8> = b[i + 1..].iter().copied().skip_while(|&x| word(x)).take(1).collect();
        let is_template = c == b'{'
            && ((i > 0 && word(b[i - 1]))
                || (b.get(i + 1).is_some_and(|&x| word(x))
                    && matches!(after.first(), Some(b'[' | b'(' | b'+' | b'-' | b'*' | b'/' | b'%'))));
        if is_template {
            let start = l[..i].rfind([' ', ',', '[']).map_or(0, |s| s + 1);
            let end = l[i..].find('}').map_or(l.len(), |e| i + e + 1);
            let end = end + l[end..].find([',', ' ', ']', '}']).unwrap_or(l.len() - end);
            return Some(l[start..end].trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> Arc<str> {
        "t.yaml".into()
    }

    #[test]
    fn values_keep_their_positions() {
        let n = parse(&f(), b"a: 1\nb:\n  - {x: foo, y: [1, 2.5]}\n").unwrap();
        let b = n.get("b").unwrap();
        let x = b.as_seq().unwrap()[0].get("x").unwrap();
        assert_eq!(x.value, YValue::Str("foo".into()));
        assert_eq!((x.loc.line, x.loc.col), (3, 9));
        assert_eq!(n.get("a").unwrap().value, YValue::Int(1));
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = parse(&f(), b"a: [1, 2\nb: 3").unwrap_err();
        let loc = e.loc.unwrap();
        assert_eq!((loc.line, loc.col), (2, 2));
        assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse(&f(), b"a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains("duplicate mapping key: a"), "{}", e.message);
        assert_eq!(e.loc.unwrap().line, 2);
    }

    #[test]
    fn only_yaml_12_booleans() {
        let n = parse(&f(), b"a: [n, y, no, off, true, False]\n").unwrap();
        let a: Vec<&YValue> = n.get("a").unwrap().as_seq().unwrap().iter().map(|x| &x.value).collect();
        assert_eq!(a[0], &YValue::Str("n".into()));
        assert_eq!(a[3], &YValue::Str("off".into()));
        assert_eq!(a[4], &YValue::Bool(true));
        assert_eq!(a[5], &YValue::Bool(false));
    }

    #[test]
    fn describe_shows_kind_and_value() {
        assert_eq!(YValue::Str("abc".into()).describe(), "the string \"abc\"");
        let l = YValue::Seq(vec![]);
        assert_eq!(l.describe(), "an empty list");
        assert_eq!(YValue::Int(-1).describe(), "the integer -1");
    }

    #[test]
    fn empty_and_binary_files() {
        assert!(parse(&f(), b"").unwrap_err().message.contains("empty"));
        assert!(parse(&f(), b"# only a comment\n\n").unwrap_err().message.contains("empty"));
        assert!(parse(&f(), &[0xff, 0xfe, 0x00, 0x01]).unwrap_err().message.contains("not UTF-8"));
        assert!(parse(&f(), b"a\0b").unwrap_err().message.contains("NUL"));
    }
}
