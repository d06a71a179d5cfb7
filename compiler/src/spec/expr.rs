//! Block templates: `{expr}` placeholders in spec strings, and the little expression language inside them.
//!
//! A string holding `{...}` is a template. If the whole string is one placeholder (`"{filters[2]}"`) the
//! value keeps its type (an integer stays an integer, a list a list); otherwise each placeholder is
//! formatted into the string (`"res{stage}{block}_branch2a"`). Expressions: integers, parameter names,
//! indexing `x[i]`, `+ - * /` (integer; `/` must divide exactly), `%`, unary `-`, and parentheses.
//! `{{` and `}}` are literal braces.
//!
//! Hostile templates get errors, not panics: arithmetic is checked (overflow, `i64::MIN / -1`, division
//! by zero), nesting is limited to [`MAX_EXPR_DEPTH`], and text a template produces to
//! [`MAX_TEMPLATE_TEXT`] bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// How deeply parentheses, indexing and unary minus may nest in one expression.
pub const MAX_EXPR_DEPTH: usize = 64;
/// The longest text one template may produce (a name, a reference).
pub const MAX_TEMPLATE_TEXT: usize = 4096;

/// A template value: what block parameters hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
}

impl Value {
    /// About the memory it takes once substituted into a spec (what the expansion budget counts): 64
    /// bytes per value, plus the text of strings.
    pub fn size(&self) -> usize {
        match self {
            Value::Str(s) => 64 + s.len(),
            Value::List(v) => 64 + v.iter().map(Value::size).sum::<usize>(),
            _ => 64,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s}"),
            Value::List(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
        }
    }
}

pub type Env = HashMap<String, Value>;

/// Why a template failed.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprError {
    /// A name that is no parameter here. Its message (with a "did you mean" and the parameters in
    /// scope) is written by [`ExprError::message`] only when it is reported, since a template in a block
    /// used many times fails many times.
    Unknown { name: String, src: String },
    /// Anything else, with its message.
    Other(String),
}

impl ExprError {
    /// The full message, with a suggestion from the parameters in `env`.
    pub fn message(&self, env: &Env) -> String {
        let ExprError::Unknown { name, src } = self else { return self.to_string() };
        let mut known: Vec<&str> = env.keys().map(|s| s.as_str()).collect();
        known.sort();
        let hint = crate::diag::did_you_mean(name, known.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        const LISTED: usize = 20;
        let here = match known.len() {
            0 => "there are no parameters here (templates take their values from a block's parameters)".to_string(),
            n if n > LISTED => format!("parameters here: {}, and {} more", known[..LISTED].join(", "), n - LISTED),
            _ => format!("parameters here: {}", known.join(", ")),
        };
        format!("unknown parameter `{name}` in `{{{src}}}`{hint}; {here}")
    }
}

impl fmt::Display for ExprError {
    /// The message without suggestions (what identifies the mistake).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExprError::Unknown { name, src } => write!(f, "unknown parameter `{name}` in `{{{src}}}`"),
            ExprError::Other(m) => f.write_str(m),
        }
    }
}

impl From<String> for ExprError {
    fn from(s: String) -> Self {
        ExprError::Other(s)
    }
}

type Result<T> = std::result::Result<T, ExprError>;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Ident(String),
    Op(char),
}

fn lex(s: &str) -> Result<Vec<Tok>> {
    let mut out = vec![];
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let st = i;
            while i < cs.len() && cs[i].is_ascii_digit() {
                i += 1;
            }
            let t: String = cs[st..i].iter().collect();
            let too_large = || format!("the number `{}` is too large (integers are 64-bit) in `{{{s}}}`", shorten(&t));
            out.push(Tok::Int(t.parse().map_err(|_| too_large())?));
        } else if c.is_alphabetic() || c == '_' {
            let st = i;
            while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(cs[st..i].iter().collect()));
        } else if "+-*/%()[]".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else {
            return Err(format!("unexpected character {c:?} in expression `{{{}}}`", shorten(s)).into());
        }
    }
    Ok(out)
}

/// A long text cut for a message.
fn shorten(s: &str) -> Cow<'_, str> {
    if s.chars().count() <= 60 {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().take(57).collect::<String>() + "...")
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(i) => write!(f, "{i}"),
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Op(c) => write!(f, "{c}"),
        }
    }
}

/// A recursive-descent parser that evaluates as it parses. Recursion is bounded by `depth`.
struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    env: &'a Env,
    src: &'a str,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Op(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn err(&self, what: impl fmt::Display) -> ExprError {
        ExprError::Other(format!("{what} in `{{{}}}`", shorten(self.src)))
    }
    fn int(&self, v: &Value, what: &str) -> Result<i64> {
        match v {
            Value::Int(i) => Ok(*i),
            other => Err(self.err(format_args!("{what} needs integers, found `{}`", shorten(&other.to_string())))),
        }
    }
    /// Enters one level of nesting; refuses past the limit (before the stack could overflow).
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return Err(self.err(format_args!(
                "the expression nests more than {MAX_EXPR_DEPTH} levels deep (parentheses, indexing, unary minus)"
            )));
        }
        Ok(())
    }
    fn sum(&mut self) -> Result<Cow<'a, Value>> {
        let mut v = self.product()?;
        loop {
            let op = if self.eat('+') {
                '+'
            } else if self.eat('-') {
                '-'
            } else {
                return Ok(v);
            };
            let r = self.product()?;
            let (a, b) = (self.int(&v, "arithmetic")?, self.int(&r, "arithmetic")?);
            let x = if op == '+' { a.checked_add(b) } else { a.checked_sub(b) };
            let x = x.ok_or_else(|| self.err(format_args!("{a} {op} {b} overflows 64-bit integers")))?;
            v = Cow::Owned(Value::Int(x));
        }
    }
    fn product(&mut self) -> Result<Cow<'a, Value>> {
        let mut v = self.unary()?;
        loop {
            let op = if self.eat('*') {
                '*'
            } else if self.eat('/') {
                '/'
            } else if self.eat('%') {
                '%'
            } else {
                return Ok(v);
            };
            let r = self.unary()?;
            let (a, b) = (self.int(&v, "arithmetic")?, self.int(&r, "arithmetic")?);
            if b == 0 && op != '*' {
                return Err(self.err("division by zero"));
            }
            let x = match op {
                '*' => a.checked_mul(b),
                '/' => match a.checked_rem(b) {
                    Some(0) => a.checked_div(b),
                    Some(_) => return Err(self.err(format_args!("{a} / {b} is not a whole number"))),
                    None => None,
                },
                _ => a.checked_rem(b),
            };
            let x = x.ok_or_else(|| self.err(format_args!("{a} {op} {b} overflows 64-bit integers")))?;
            v = Cow::Owned(Value::Int(x));
        }
    }
    fn unary(&mut self) -> Result<Cow<'a, Value>> {
        if !self.eat('-') {
            return self.postfix();
        }
        self.enter()?;
        let v = self.unary()?;
        let i = self.int(&v, "negation")?;
        let x = i.checked_neg().ok_or_else(|| self.err(format_args!("-({i}) overflows 64-bit integers")))?;
        self.depth -= 1;
        Ok(Cow::Owned(Value::Int(x)))
    }
    fn postfix(&mut self) -> Result<Cow<'a, Value>> {
        let mut v = self.atom()?;
        while self.eat('[') {
            self.enter()?;
            let i = self.sum()?;
            if !self.eat(']') {
                return Err(self.err("expected `]`"));
            }
            self.depth -= 1;
            let i = self.int(&i, "an index")?;
            let item = |items: &[Value]| {
                let n = items.len();
                usize::try_from(i).ok().filter(|&i| i < n).ok_or_else(|| {
                    let valid = match n {
                        0 => "the list is empty".to_string(),
                        _ => format!("valid indices: 0 to {}", n - 1),
                    };
                    self.err(format_args!("index {i} is out of range for a list of {n} ({valid})"))
                })
            };
            v = match v {
                Cow::Borrowed(Value::List(items)) => Cow::Borrowed(&items[item(items)?]),
                Cow::Owned(Value::List(mut items)) => {
                    let k = item(&items)?;
                    Cow::Owned(items.swap_remove(k))
                }
                other => {
                    return Err(self.err(format_args!("cannot index `{}` (not a list)", shorten(&other.to_string()))))
                }
            };
        }
        Ok(v)
    }
    fn atom(&mut self) -> Result<Cow<'a, Value>> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Int(i)) => {
                self.pos += 1;
                Ok(Cow::Owned(Value::Int(i)))
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                let env: &'a Env = self.env;
                env.get(&name).map(Cow::Borrowed).ok_or_else(|| ExprError::Unknown { name, src: self.src.to_string() })
            }
            Some(Tok::Op('(')) => {
                self.pos += 1;
                self.enter()?;
                let v = self.sum()?;
                if !self.eat(')') {
                    return Err(self.err("expected `)`"));
                }
                self.depth -= 1;
                Ok(v)
            }
            _ => Err(ExprError::Other(format!("incomplete expression `{{{}}}`", shorten(self.src)))),
        }
    }
}

/// Evaluates one expression (the text between braces).
pub fn eval(src: &str, env: &Env) -> Result<Value> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err(ExprError::Other("empty placeholder `{}`".into()));
    }
    let mut p = Parser { toks, pos: 0, env, src, depth: 0 };
    let v = p.sum()?.into_owned();
    if p.pos != p.toks.len() {
        return Err(ExprError::Other(format!("unexpected `{}` in expression `{{{}}}`", p.toks[p.pos], shorten(src))));
    }
    Ok(v)
}

/// True if the string contains a placeholder.
pub fn is_template(s: &str) -> bool {
    s.replace("{{", "").replace("}}", "").contains('{')
}

/// Expands a template string. A string that is exactly one placeholder keeps the value's type.
pub fn expand(s: &str, env: &Env) -> Result<Value> {
    let t = s.trim();
    if t.starts_with('{') && t.ends_with('}') && !t.starts_with("{{") && t[1..t.len() - 1].find(['{', '}']).is_none() {
        return eval(&t[1..t.len() - 1], env);
    }
    let mut out = String::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        match cs[i] {
            '{' if cs.get(i + 1) == Some(&'{') => {
                out.push('{');
                i += 2;
            }
            '}' if cs.get(i + 1) == Some(&'}') => {
                out.push('}');
                i += 2;
            }
            '{' => {
                let end = cs[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| ExprError::Other(format!("unclosed `{{` in `{}`", shorten(s))))?;
                let inner: String = cs[i + 1..i + end].iter().collect();
                match eval(&inner, env)? {
                    Value::List(_) => {
                        return Err(ExprError::Other(format!("cannot put a list into the text of `{}`", shorten(s))))
                    }
                    v => out.push_str(&v.to_string()),
                }
                i += end + 1;
            }
            '}' => return Err(ExprError::Other(format!("unmatched `}}` in `{}`", shorten(s)))),
            c => {
                out.push(c);
                i += 1;
            }
        }
        if out.len() > MAX_TEMPLATE_TEXT {
            return Err(ExprError::Other(format!(
                "`{}` expands to more than {MAX_TEMPLATE_TEXT} bytes of text (the limit for a template)",
                shorten(s)
            )));
        }
    }
    Ok(Value::Str(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        let mut e = Env::new();
        e.insert("stage".into(), Value::Int(2));
        e.insert("block".into(), Value::Str("a".into()));
        e.insert("filters".into(), Value::List(vec![Value::Int(64), Value::Int(64), Value::Int(256)]));
        e.insert("min".into(), Value::Int(i64::MIN));
        e
    }

    fn err(s: &str) -> String {
        expand(s, &env()).unwrap_err().message(&env())
    }

    #[test]
    fn names_and_typed_values() {
        assert_eq!(expand("res{stage}{block}_branch2a", &env()).unwrap(), Value::Str("res2a_branch2a".into()));
        assert_eq!(expand("{filters[2]}", &env()).unwrap(), Value::Int(256));
        assert_eq!(expand("{filters[0] * 4}", &env()).unwrap(), Value::Int(256));
        assert_eq!(expand("{(stage + 1) * 2}", &env()).unwrap(), Value::Int(6));
        assert_eq!(expand("{-stage * 3}", &env()).unwrap(), Value::Int(-6));
        assert_eq!(expand("{--stage}", &env()).unwrap(), Value::Int(2));
        assert_eq!(expand("{7 % 3 - 5 / 5}", &env()).unwrap(), Value::Int(0));
        assert_eq!(expand("{{literal}}", &env()).unwrap(), Value::Str("{literal}".into()));
        assert_eq!(expand("{min}", &env()).unwrap(), Value::Int(i64::MIN));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(err("{filtres[0]}").contains("did you mean `filters`"));
        assert!(err("{filters[3]}").contains("out of range"));
        assert!(err("{block * 2}").contains("needs integers"));
        assert!(err("x{stage").contains("unclosed"));
        assert!(err("{stage / 0}").contains("division by zero"));
        assert!(err("{stage % 0}").contains("division by zero"));
        assert!(err("{9223372036854775807 * 2}").contains("overflows"));
        assert!(err("{99999999999999999999}").contains("too large"));
        assert_eq!(err("{stage stage}"), "unexpected `stage` in expression `{stage stage}`");
        assert!(expand("{x}", &Env::new()).unwrap_err().message(&Env::new()).contains("no parameters here"));
    }

    #[test]
    fn arithmetic_on_the_extremes_is_checked() {
        assert_eq!(err("{min % -1}"), "-9223372036854775808 % -1 overflows 64-bit integers in `{min % -1}`");
        assert_eq!(err("{min / -1}"), "-9223372036854775808 / -1 overflows 64-bit integers in `{min / -1}`");
        assert_eq!(err("{-min}"), "-(-9223372036854775808) overflows 64-bit integers in `{-min}`");
        assert!(err("{min - 1}").contains("overflows"));
        assert!(err("{min * -1}").contains("overflows"));
        assert!(err("x{-min}").contains("overflows"));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for depth in [MAX_EXPR_DEPTH + 1, 10_000, 100_000] {
            let parens = format!("{{{}stage{}}}", "(".repeat(depth), ")".repeat(depth));
            assert!(err(&parens).contains("nests more than 64 levels"), "{depth}");
            let minus = format!("{{{}stage}}", "-".repeat(depth));
            assert!(err(&minus).contains("nests more than 64 levels"), "{depth}");
            let index = format!("{{filters{}}}", "[0".repeat(depth));
            assert!(err(&index).contains("nests more than 64 levels"), "{depth}");
        }
        let ok = format!("{{{}stage{}}}", "(".repeat(MAX_EXPR_DEPTH), ")".repeat(MAX_EXPR_DEPTH));
        assert_eq!(expand(&ok, &env()).unwrap(), Value::Int(2));
    }

    #[test]
    fn text_is_bounded() {
        let mut e = env();
        e.insert("long".into(), Value::Str("x".repeat(MAX_TEMPLATE_TEXT)));
        assert!(expand("{long}_a", &e).unwrap_err().to_string().contains("more than 4096 bytes"));
        assert!(expand("{long}", &e).is_ok());
    }
}
