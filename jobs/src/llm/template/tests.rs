use super::*;
use std::path::Path;
use std::time::Duration;

fn render(source: &str, messages: &str, tools: Option<&str>) -> Result<String, String> {
    ChatTemplate::new(source)?.render(&ChatInput {
        messages,
        tools,
        add_generation_prompt: true,
        bos_token: "<s>",
        eos_token: "</s>",
        now: UNIX_EPOCH + Duration::from_secs(1_785_067_200), // 2026-07-26 12:00 UTC
    })
}

/// Every real template committed under `jobs/tests/chat_templates` renders every case of
/// its `cases.json` to exactly what Python's Jinja2 gives with Hugging Face's settings
/// (`render.py` wrote the expected files), or refuses it as the template does.
#[test]
fn real_templates_render_as_hugging_face_renders_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chat_templates");
    // Read with minijinja's values, which keep each object's keys in their order (as a
    // client's JSON text reaches the renderer), and the cases written back from them.
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases"))
            .expect("cases.json");
    let json = |v: Value| serde_json::to_string(&v).expect("json");
    let now = UNIX_EPOCH + Duration::from_secs(1_785_067_200);
    let mut templates: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
        .collect();
    templates.sort();
    assert!(templates.len() >= 10, "templates: {templates:?}");
    let cases = spec.get_attr("cases").expect("cases");
    let names: Vec<String> = cases
        .try_iter()
        .expect("cases")
        .map(|k| k.to_string())
        .collect();
    let attr = |v: &Value, k: &str| v.get_attr(k).expect(k);
    let mut checked = 0;
    for path in &templates {
        let stem = path.file_stem().expect("stem").to_string_lossy();
        let template = ChatTemplate::new(&std::fs::read_to_string(path).expect("template"))
            .unwrap_or_else(|e| panic!("{stem} does not parse: {e}"));
        for case in &names {
            let c = attr(&cases, case);
            let messages = json(attr(&c, "messages"));
            let tools = Some(attr(&c, "tools")).filter(|t| !t.is_none()).map(json);
            let got = template.render(&ChatInput {
                messages: &messages,
                tools: tools.as_deref(),
                add_generation_prompt: attr(&c, "add_generation_prompt").is_true(),
                bos_token: attr(&spec, "bos_token").as_str().expect("bos"),
                eos_token: attr(&spec, "eos_token").as_str().expect("eos"),
                now,
            });
            let text = dir.join(format!("{stem}.{case}.txt"));
            let error = dir.join(format!("{stem}.{case}.error"));
            if text.exists() {
                let want = std::fs::read_to_string(&text).expect("expected");
                let got = got.unwrap_or_else(|e| panic!("{stem}.{case}: {e}"));
                if got != want {
                    let at = got
                        .chars()
                        .zip(want.chars())
                        .position(|(a, b)| a != b)
                        .unwrap_or(got.len().min(want.len()));
                    panic!(
                        "{stem}.{case} parts from Jinja2 at character {at}:\n--- myco\n{got}\n--- Jinja2\n{want}"
                    );
                }
            } else {
                let want = std::fs::read_to_string(&error).expect("expected error");
                let e = got.expect_err(&format!("{stem}.{case} should fail: {want}"));
                if let Some(message) = want.strip_prefix("raised: ") {
                    assert!(
                        e.contains(message),
                        "{stem}.{case}: {e} (Jinja2: {message})"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, templates.len() * names.len());
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let t = r#"{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(separators=(",", ":"), sort_keys=true) }}"#;
    let messages = r#"[{"role": "user", "content": "x"}]"#;
    let source = format!(
        "{{% set x = {{\"b\": [1, 2.5, 1e-05, 3.0], \"a\": \"caf\u{e9} \\\"q\\\" \\n\", \"n\": none, \"t\": true, \"e\": {{}}, \"l\": []}} %}}{t}"
    );
    let out = render(&source, messages, None).expect("render");
    assert_eq!(
        out,
        "{\"b\": [1, 2.5, 1e-05, 3.0], \"a\": \"caf\u{e9} \\\"q\\\" \\n\", \"n\": null, \"t\": true, \"e\": {}, \"l\": []}|{\n  \"b\": [\n    1,\n    2.5,\n    1e-05,\n    3.0\n  ],\n  \"a\": \"caf\u{e9} \\\"q\\\" \\n\",\n  \"n\": null,\n  \"t\": true,\n  \"e\": {},\n  \"l\": []\n}|{\"a\":\"caf\u{e9} \\\"q\\\" \\n\",\"b\":[1,2.5,1e-05,3.0],\"e\":{},\"l\":[],\"n\":null,\"t\":true}"
    );
}

#[test]
fn tool_call_arguments_are_objects_and_keys_keep_their_order() {
    let messages = r#"[{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"z\": 1, \"a\": [true]}"}}, {"function": {"name": "g", "arguments": "not json"}}]}]"#;
    let source = "{% for m in messages %}[{{ m.content }}]{% for c in m.tool_calls %}{{ c.function.name }}={{ c.function.arguments | tojson }};{% if c.function.arguments is mapping %}{{ c.function.arguments.z }}{% endif %}{% endfor %}{% endfor %}";
    assert_eq!(
        render(source, messages, None).expect("render"),
        "[]f={\"z\": 1, \"a\": [true]};1g=\"not json\";"
    );
}

#[test]
fn raise_exception_and_python_methods() {
    let messages = r#"[{"role": "system", "content": "  hi  "}]"#;
    let e = render(
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
        messages,
        None,
    )
    .expect_err("raises");
    assert!(e.starts_with("System role not supported"), "{e}");
    let out = render(
        "{{ messages[0].content.strip() }}|{% for k, v in messages[0].items() %}{{ k }};{% endfor %}|{{ messages[0].get('name', 'none') }}|{{ 'a,b'.split(',') | length }}|{{ tools is defined }}|{{ strftime_now('%d %b %Y, %A %B %Y-%m-%d %H:%M') }}",
        messages,
        None,
    )
    .expect("render");
    assert_eq!(
        out,
        "hi|role;content;|none|2|False|26 Jul 2026, Sunday July 2026-07-26 12:00"
    );
    assert_eq!(
        render("{{ tools | length }}", messages, Some("[1, 2]")).expect("tools"),
        "2"
    );
}

#[test]
fn a_template_that_does_not_parse_says_where() {
    let e =
        ChatTemplate::new("line one\n{% for m in messages %}\n{{ m.content }").expect_err("bad");
    assert!(e.contains("template line"), "{e}");
}

#[test]
fn civil_dates() {
    assert_eq!(civil(0), (1970, 1, 1));
    assert_eq!(civil(19_723), (2024, 1, 1));
    assert_eq!(civil(11_016), (2000, 2, 29));
    assert_eq!(civil(-1), (1969, 12, 31));
}

#[test]
fn jinja_or_a_name() {
    assert!(is_jinja(
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    ));
    assert!(!is_jinja("chatml"));
}
