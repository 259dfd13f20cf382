use super::*;

const TOOLS: &str = r#"[
  {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
  {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
]"#;

fn tools(choice: ToolChoice, parallel: bool) -> Tools {
    Tools {
        json: TOOLS.into(),
        choice,
        parallel,
    }
}

fn plan(format: Format, choice: ToolChoice) -> Plan {
    Plan::new(format, &tools(choice, true))
        .expect("plan")
        .expect("some")
}

#[test]
fn formats_are_told_by_the_templates_marks() {
    assert_eq!(
        Format::of_template(Some("{{ '<tool_call>' }}")),
        Format::Hermes
    );
    assert_eq!(
        Format::of_template(Some("{{ '<|python_tag|>' }}")),
        Format::Llama3
    );
    assert_eq!(
        Format::of_template(Some("{{ '[TOOL_CALLS]' }}")),
        Format::Mistral
    );
    assert_eq!(
        Format::of_template(Some("{{ m.content }}")),
        Format::Generic
    );
    assert_eq!(Format::of_template(None), Format::Generic);
}

#[test]
fn hermes_calls_parse_and_malformed_ones_stay_text() {
    let p = plan(Format::Hermes, ToolChoice::Auto);
    assert!(p.lazy);
    let (content, calls) = p.parse(
        "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"x\"}}\n</tool_call>",
        7,
    );
    assert_eq!(content, "Let me look.");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_ne!(calls[0].id, calls[1].id);
    // Unclosed, unknown tool, arguments not an object: text.
    for bad in [
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
        "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"search\", \"arguments\": 3}</tool_call>",
    ] {
        let (content, calls) = p.parse(bad, 1);
        assert!(calls.is_empty(), "{bad}");
        assert_eq!(content, bad);
    }
}

#[test]
fn llama3_mistral_and_generic_calls_parse() {
    let p = plan(Format::Llama3, ToolChoice::Required);
    assert!(!p.lazy && !p.parallel);
    let (_, calls) = p.parse(
        "<|python_tag|>{\"name\": \"search\", \"parameters\": {\"q\": \"rust\"}}",
        1,
    );
    assert_eq!(calls[0].arguments, r#"{"q":"rust"}"#);
    let p = plan(Format::Mistral, ToolChoice::Auto);
    let (_, calls) = p.parse(
        "[TOOL_CALLS][{\"name\": \"search\", \"arguments\": {\"q\": \"a\"}}, {\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}]",
        1,
    );
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].arguments, r#"{"city":"Rome"}"#);
    let p = plan(Format::Generic, ToolChoice::Auto);
    assert!(!p.lazy, "the generic format holds from the first token");
    let (content, calls) = p.parse("{\"response\": \"hi there\"}", 1);
    assert_eq!((content.as_str(), calls.len()), ("hi there", 0));
    let (_, calls) = p.parse(
        "{\"tool_calls\": [{\"name\": \"search\", \"arguments\": {\"q\": \"b\"}}]}",
        1,
    );
    assert_eq!(calls[0].name, "search");
}

#[test]
fn choices_shape_the_schema() {
    assert!(
        Plan::new(Format::Hermes, &tools(ToolChoice::None, true))
            .expect("none")
            .is_none()
    );
    let named = plan(Format::Hermes, ToolChoice::Function("search".into()));
    assert_eq!(named.tools, vec!["search".to_owned()]);
    assert_eq!(named.schema["properties"]["name"]["const"], "search");
    let both = plan(Format::Hermes, ToolChoice::Required);
    assert_eq!(both.schema["anyOf"].as_array().map(Vec::len), Some(2));
    let generic = Plan::new(Format::Generic, &tools(ToolChoice::Required, false))
        .expect("plan")
        .expect("some");
    assert_eq!(generic.schema["properties"]["tool_calls"]["maxItems"], 1);
    let (at, why) = Plan::new(
        Format::Hermes,
        &tools(ToolChoice::Function("nope".into()), true),
    )
    .expect_err("unknown");
    assert_eq!(at, "tool_choice.function.name");
    assert!(why.contains("get_weather, search"), "{why}");
}

#[test]
fn bad_tools_are_named_by_index() {
    for (json, at) in [
        ("{}", "tools"),
        ("[]", "tools"),
        (r#"[{"type": "retrieval"}]"#, "tools[0].type"),
        (r#"[{"type": "function"}]"#, "tools[0].function"),
        (
            r#"[{"type": "function", "function": {"name": "a b"}}]"#,
            "tools[0].function.name",
        ),
        (
            r#"[{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]"#,
            "tools[1].function.name",
        ),
        (
            r#"[{"type": "function", "function": {"name": "a", "parameters": 3}}]"#,
            "tools[0].function.parameters",
        ),
    ] {
        assert_eq!(parse_tools(json).expect_err(json).0, at, "{json}");
    }
}

#[test]
fn the_call_grammar_is_wrapped_in_the_formats_marks() {
    let g =
        "root ::= \"{\" space \"\\\"root\\\"\" obj\nobj ::= [^\"root] root-x\nspace ::= \" \"?\n";
    let p = plan(Format::Hermes, ToolChoice::Required);
    let w = p.wrap(g);
    assert!(w.starts_with("root ::= \"<tool_call>\\n\" tool-call \"\\n</tool_call>\" (\"\\n<tool_call>\\n\" tool-call \"\\n</tool_call>\")*\n"), "{w}");
    // Only the rule named root is renamed: not inside strings, classes or longer names.
    assert!(
        w.contains("tool-call ::= \"{\" space \"\\\"root\\\"\" obj"),
        "{w}"
    );
    assert!(w.contains("obj ::= [^\"root] root-x"), "{w}");
}

#[test]
fn a_template_without_tools_gets_them_described() {
    let messages = r#"[{"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "cold"}]"#;
    let out = generic_messages(messages, TOOLS, &ToolChoice::Auto).expect("generic");
    let list: Vec<Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(list[0]["role"], "system");
    assert!(
        list[0]["content"]
            .as_str()
            .unwrap_or("")
            .contains("get_weather")
    );
    assert_eq!(
        list[2]["content"],
        r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Oslo"}}]}"#
    );
    assert_eq!(list[3]["role"], "user");
    assert_eq!(list[3]["content"], "The result of get_weather: cold");
    assert!(plain_messages(messages).is_err());
    assert_eq!(
        plain_messages(r#"[{"role": "user", "content": [{"type": "text", "text": "a"}]}]"#)
            .expect("plain"),
        vec![("user".to_owned(), "a".to_owned())]
    );
}
