//! Chat templates as their authors wrote them: the Jinja text a GGUF carries
//! (`tokenizer.chat_template`), rendered the way Hugging Face's `apply_chat_template` renders
//! it, so a prompt is byte for byte what the model was trained on, tool turns included.
//!
//! The engine is minijinja, set up as transformers sets up Jinja2: `trim_blocks` and
//! `lstrip_blocks`, loop controls (`break`, `continue`), a `tojson` that writes what Python's
//! `json.dumps(..., ensure_ascii=False)` writes (keys in their order, `", "` and `": "`),
//! `raise_exception(message)`, `strftime_now(format)`, and the Python methods templates call
//! on strings, dicts and lists (`.strip()`, `.items()`, `.get()`, ...: minijinja-contrib's
//! pycompat). The context: `messages`, `tools` (only when the request has some),
//! `add_generation_prompt`, `bos_token` and `eos_token`. A turn's null `content` (an
//! assistant turn of tool calls alone) is given as "": templates concatenate it.
//!
//! Messages and tools are JSON as OpenAI clients send them. A tool call's `arguments` arrive
//! as a JSON string; templates index and `tojson` them as an object (Llama 3.x, Qwen, Hermes),
//! so a string that parses as a JSON object is given to the template as that object, as
//! llama.cpp's server does.
//!
//! Nothing here calls llama.cpp: the templates a model names by a llama.cpp name (`chatml`,
//! `llama3`, ...) stay llama.cpp's (see `infer::engine`).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// Whether `text` is a Jinja template (rather than the name of one of llama.cpp's).
pub fn is_jinja(text: &str) -> bool {
    text.contains("{%") || text.contains("{{")
}

/// A parsed chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

/// What a template renders.
#[derive(Debug, Clone)]
pub struct ChatInput<'a> {
    /// The messages: a JSON array of `{"role", "content", "tool_calls", "tool_call_id",
    /// "name"}` objects, as OpenAI's API has them.
    pub messages: &'a str,
    /// The tools: a JSON array of `{"type": "function", "function": {...}}`, or None.
    pub tools: Option<&'a str>,
    pub add_generation_prompt: bool,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    /// The time `strftime_now` formats (UTC).
    pub now: SystemTime,
}

impl ChatTemplate {
    /// Parse `source`; Err says where it does not parse.
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| describe(&e))?;
        Ok(ChatTemplate { env })
    }

    /// The prompt text: Err names what the template refused (its `raise_exception` message,
    /// or the line where rendering failed).
    pub fn render(&self, input: &ChatInput<'_>) -> Result<String, String> {
        let messages = messages_value(input.messages)?;
        let tools = match input.tools {
            Some(t) => Some(
                serde_json::from_str::<Value>(t).map_err(|e| format!("tools are not JSON: {e}"))?,
            ),
            None => None,
        };
        let now = input.now;
        let strftime_now =
            Value::from_function(move |format: String| -> String { strftime(&format, now) });
        // `tools` only when there are some: a template may iterate them whenever they are
        // defined (Hermes 2 Pro's tool-use template does).
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages),
            (
                "add_generation_prompt",
                Value::from(input.add_generation_prompt),
            ),
            ("bos_token", Value::from(input.bos_token)),
            ("eos_token", Value::from(input.eos_token)),
            ("strftime_now", strftime_now),
        ];
        if let Some(tools) = tools {
            ctx.push(("tools", tools));
        }
        let ctx: Value = ctx.into_iter().collect();
        let template = self.env.get_template("chat").map_err(|e| describe(&e))?;
        template.render(ctx).map_err(|e| describe(&e))
    }
}

/// An error with its line, and the message alone when the template raised it.
fn describe(e: &Error) -> String {
    let mut out = e
        .detail()
        .map_or_else(|| e.kind().to_string(), str::to_owned);
    if let Some(line) = e.line() {
        let _ = write!(out, " (template line {line})");
    }
    out
}

/// The messages as the template sees them (objects keep their keys' order): a null
/// `content` is "", and a tool call's `function.arguments` string that parses as a JSON
/// object becomes that object.
fn messages_value(json: &str) -> Result<Value, String> {
    let list: Value =
        serde_json::from_str(json).map_err(|e| format!("messages are not JSON: {e}"))?;
    if list.kind() != ValueKind::Seq {
        return Err("messages must be a JSON array".into());
    }
    let iter = list.try_iter().map_err(|e| e.to_string())?;
    Ok(iter
        .map(|m| {
            let m = with_entry(
                &m,
                "content",
                |c| if c.is_none() { Value::from("") } else { c },
            );
            with_entry(&m, "tool_calls", |calls| match calls.try_iter() {
                Ok(it) if calls.kind() == ValueKind::Seq => it
                    .map(|call| {
                        with_entry(&call, "function", |f| {
                            with_entry(&f, "arguments", object_of)
                        })
                    })
                    .collect(),
                _ => calls,
            })
        })
        .collect())
}

/// `args` as the JSON object its text holds, or as it is.
fn object_of(args: Value) -> Value {
    match args.as_str().map(serde_json::from_str::<Value>) {
        Some(Ok(obj)) if obj.kind() == ValueKind::Map => obj,
        _ => args,
    }
}

/// `v` with its `key` entry through `f`, when `v` is a map that has one.
fn with_entry(v: &Value, key: &str, f: impl Fn(Value) -> Value) -> Value {
    if v.kind() != ValueKind::Map {
        return v.clone();
    }
    let Ok(keys) = v.try_iter() else {
        return v.clone();
    };
    keys.map(|k| {
        let item = v.get_item(&k).unwrap_or(Value::UNDEFINED);
        let item = if k.as_str() == Some(key) {
            f(item)
        } else {
            item
        };
        (k, item)
    })
    .collect()
}

/// Hugging Face's `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators {
        Some(s) => {
            let parts: Vec<String> = s
                .try_iter()?
                .map(|p| p.as_str().unwrap_or_default().to_owned())
                .collect();
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ));
                }
            }
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let mut out = String::new();
    write_json(
        &value,
        indent,
        (&item, &key),
        sort_keys.unwrap_or(false),
        0,
        &mut out,
    )?;
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps` of `v` into `out`.
fn write_json(
    v: &Value,
    indent: Option<usize>,
    seps: (&str, &str),
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(seps.0);
                }
                newline(out, depth + 1);
                write_json(item, indent, seps, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(seps.0);
                }
                newline(out, depth + 1);
                json_string(&k.to_string(), out);
                out.push_str(seps.1);
                write_json(&v.get_item(k)?, indent, seps, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => json_string(&v.to_string(), out),
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`: only `"`, `\` and control
/// characters escaped.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr` of a float: the shortest digits that read back, `1.0` for whole
/// numbers, an exponent below 1e-4 and from 1e16.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust writes `1.5e-5`; Python `1.5e-05`.
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let mant = if mant.contains('.') {
            mant.to_owned()
        } else {
            format!("{mant}.0")
        };
        let mant = mant.strip_suffix(".0").unwrap_or(&mant).to_owned();
        return format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// `strftime(format)` of `now`, UTC, for the codes chat templates use (`%d %b %Y`,
/// `%Y-%m-%d`, `%B %d, %Y`, times); others are written as they are.
fn strftime(format: &str, now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let (hh, mm, ss) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => {
                let _ = write!(out, "{d:02}");
            }
            Some('m') => {
                let _ = write!(out, "{m:02}");
            }
            Some('Y') => {
                let _ = write!(out, "{y}");
            }
            Some('y') => {
                let _ = write!(out, "{:02}", y.rem_euclid(100));
            }
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('H') => {
                let _ = write!(out, "{hh:02}");
            }
            Some('M') => {
                let _ = write!(out, "{mm:02}");
            }
            Some('S') => {
                let _ = write!(out, "{ss:02}");
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests;
