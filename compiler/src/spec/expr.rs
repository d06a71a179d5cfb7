//! Block templates: `{expr}` placeholders in spec strings, and the little expression language inside them.
//!
//! A string holding `{...}` is a template. If the whole string is one placeholder (`"{filters[2]}"`) the
//! value keeps its type (an integer stays an integer, a list a list); otherwise each placeholder is
//! formatted into the string (`"res{stage}{block}_branch2a"`). Expressions: integers, parameter names,
//! indexing `x[i]`, `+ - * /` (integer; `/` must divide exactly), `%`, and parentheses. `{{` and `}}`
//! are literal braces.

use std::collections::HashMap;
use std::fmt;

/// A template value: what block parameters hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
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

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Ident(String),
    Op(char),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
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
            out.push(Tok::Int(t.parse().map_err(|_| format!("number `{t}` is too large"))?));
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
            return Err(format!("unexpected character `{c}` in expression `{{{s}}}`"));
        }
    }
    Ok(out)
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

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    env: &'a Env,
    src: &'a str,
}

impl Parser<'_> {
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
    fn int(&self, v: Value, what: &str) -> Result<i64, String> {
        match v {
            Value::Int(i) => Ok(i),
            other => Err(format!("{what} needs integers, found `{other}` in `{{{}}}`", self.src)),
        }
    }
    fn sum(&mut self) -> Result<Value, String> {
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
            let (a, b) = (self.int(v, "arithmetic")?, self.int(r, "arithmetic")?);
            let x = if op == '+' { a.checked_add(b) } else { a.checked_sub(b) };
            v = Value::Int(x.ok_or_else(|| format!("overflow in `{{{}}}`", self.src))?);
        }
    }
    fn product(&mut self) -> Result<Value, String> {
        let mut v = self.postfix()?;
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
            let r = self.postfix()?;
            let (a, b) = (self.int(v, "arithmetic")?, self.int(r, "arithmetic")?);
            let x = match op {
                '*' => a.checked_mul(b),
                _ if b == 0 => return Err(format!("division by zero in `{{{}}}`", self.src)),
                '/' if a % b != 0 => return Err(format!("{a} / {b} is not a whole number in `{{{}}}`", self.src)),
                '/' => Some(a / b),
                _ => Some(a % b),
            };
            v = Value::Int(x.ok_or_else(|| format!("overflow in `{{{}}}`", self.src))?);
        }
    }
    fn postfix(&mut self) -> Result<Value, String> {
        let mut v = self.atom()?;
        while self.eat('[') {
            let i = self.sum()?;
            if !self.eat(']') {
                return Err(format!("expected `]` in `{{{}}}`", self.src));
            }
            let i = self.int(i, "an index")?;
            v = match v {
                Value::List(items) => {
                    let n = items.len();
                    usize::try_from(i).ok().and_then(|i| items.into_iter().nth(i)).ok_or_else(|| {
                        let valid = match n {
                            0 => "the list is empty".to_string(),
                            _ => format!("valid indices: 0 to {}", n - 1),
                        };
                        format!("index {i} is out of range for a list of {n} ({valid}) in `{{{}}}`", self.src)
                    })?
                }
                other => return Err(format!("cannot index `{other}` (not a list) in `{{{}}}`", self.src)),
            };
        }
        Ok(v)
    }
    fn atom(&mut self) -> Result<Value, String> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Int(i)) => {
                self.pos += 1;
                Ok(Value::Int(i))
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                self.env.get(&name).cloned().ok_or_else(|| {
                    let mut known: Vec<&str> = self.env.keys().map(|s| s.as_str()).collect();
                    known.sort();
                    let hint = crate::diag::did_you_mean(&name, known.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    let here = if known.is_empty() {
                        "there are no parameters here (templates take their values from a block's parameters)"
                            .to_string()
                    } else {
                        format!("parameters here: {}", known.join(", "))
                    };
                    format!("unknown parameter `{name}` in `{{{}}}`{hint}; {}", self.src, here)
                })
            }
            Some(Tok::Op('(')) => {
                self.pos += 1;
                let v = self.sum()?;
                if !self.eat(')') {
                    return Err(format!("expected `)` in `{{{}}}`", self.src));
                }
                Ok(v)
            }
            Some(Tok::Op('-')) => {
                self.pos += 1;
                let v = self.atom()?;
                let i = self.int(v, "negation")?;
                Ok(Value::Int(-i))
            }
            _ => Err(format!("incomplete expression `{{{}}}`", self.src)),
        }
    }
}

/// Evaluates one expression (the text between braces).
pub fn eval(src: &str, env: &Env) -> Result<Value, String> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err("empty placeholder `{}`".into());
    }
    let mut p = Parser { toks, pos: 0, env, src };
    let v = p.sum()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected `{}` in expression `{{{src}}}`", p.toks[p.pos]));
    }
    Ok(v)
}

/// True if the string contains a placeholder.
pub fn is_template(s: &str) -> bool {
    s.replace("{{", "").replace("}}", "").contains('{')
}

/// Expands a template string. A string that is exactly one placeholder keeps the value's type.
pub fn expand(s: &str, env: &Env) -> Result<Value, String> {
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
                let end = cs[i..].iter().position(|&c| c == '}').ok_or_else(|| format!("unclosed `{{` in `{s}`"))?;
                let inner: String = cs[i + 1..i + end].iter().collect();
                match eval(&inner, env)? {
                    Value::List(_) => return Err(format!("cannot put a list into the text of `{s}`")),
                    v => out.push_str(&v.to_string()),
                }
                i += end + 1;
            }
            '}' => return Err(format!("unmatched `}}` in `{s}`")),
            c => {
                out.push(c);
                i += 1;
            }
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
        e
    }

    #[test]
    fn names_and_typed_values() {
        assert_eq!(expand("res{stage}{block}_branch2a", &env()).unwrap(), Value::Str("res2a_branch2a".into()));
        assert_eq!(expand("{filters[2]}", &env()).unwrap(), Value::Int(256));
        assert_eq!(expand("{filters[0] * 4}", &env()).unwrap(), Value::Int(256));
        assert_eq!(expand("{(stage + 1) * 2}", &env()).unwrap(), Value::Int(6));
        assert_eq!(expand("{{literal}}", &env()).unwrap(), Value::Str("{literal}".into()));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(expand("{filtres[0]}", &env()).unwrap_err().contains("did you mean `filters`"));
        assert!(expand("{filters[3]}", &env()).unwrap_err().contains("out of range"));
        assert!(expand("{block * 2}", &env()).unwrap_err().contains("needs integers"));
        assert!(expand("x{stage", &env()).unwrap_err().contains("unclosed"));
        assert!(expand("{stage / 0}", &env()).unwrap_err().contains("division by zero"));
        assert!(expand("{9223372036854775807 * 2}", &env()).unwrap_err().contains("overflow"));
        assert_eq!(expand("{stage stage}", &env()).unwrap_err(), "unexpected `stage` in expression `{stage stage}`");
        assert!(expand("{x}", &Env::new()).unwrap_err().contains("no parameters here"));
    }
}
