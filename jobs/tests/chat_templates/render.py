#!/usr/bin/env python3
"""Renders each real chat template here (NAME.jinja) with each case of cases.json exactly as
Hugging Face's `apply_chat_template` does (transformers' Jinja2 settings: an
ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and loop controls, its
`tojson`, `raise_exception` and `strftime_now`), and writes NAME.CASE.txt (the text) or
NAME.CASE.error (`raised: ` and the message the template raised, or `failed: ` and
Python's error where the template cannot render the case at all). myco's renderer
(jobs/src/llm/template.rs) must give the same; its test reads these files.

A tool call's `arguments` arrive as a JSON string, as OpenAI's API has them; templates use
them as an object, so a string that parses as a JSON object is given as that object (as
llama.cpp's server and myco do). `strftime_now` formats the fixed `now` of cases.json. As myco
gives them: `tools` only when the request has tools (Hermes' tool-use template iterates
them whenever they are defined), and a turn's `content` as "" where a client sent null (an
assistant turn with only tool calls: Qwen 3, Granite and Phi-3.5 concatenate it).

Run once, with Jinja2 from PyPI (`pip install jinja2`); commit what it writes:
    python3 jobs/tests/chat_templates/render.py
"""
import json
import pathlib
from datetime import datetime, timezone

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = pathlib.Path(__file__).resolve().parent


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def objects_for_arguments(messages):
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("tool_calls"), list):
            calls = []
            for c in m["tool_calls"]:
                c = dict(c)
                f = c.get("function")
                if isinstance(f, dict) and isinstance(f.get("arguments"), str):
                    try:
                        parsed = json.loads(f["arguments"])
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict):
                        c["function"] = dict(f, arguments=parsed)
                calls.append(c)
            m["tool_calls"] = calls
        out.append(m)
    return out


def main():
    spec = json.loads((HERE / "cases.json").read_text())
    now = datetime.fromisoformat(spec["now"].replace("Z", "+00:00")).astimezone(timezone.utc)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: now.strftime(fmt)
    for path in sorted(HERE.glob("*.jinja")):
        template = env.from_string(path.read_text())
        for case, c in spec["cases"].items():
            stem = f"{path.stem}.{case}"
            for old in HERE.glob(stem + ".*"):
                if old.suffix in (".txt", ".error"):
                    old.unlink()
            try:
                kwargs = dict(
                    messages=objects_for_arguments(c["messages"]),
                    add_generation_prompt=c["add_generation_prompt"],
                    bos_token=spec["bos_token"],
                    eos_token=spec["eos_token"],
                )
                if c["tools"] is not None:
                    kwargs["tools"] = c["tools"]
                text = template.render(**kwargs)
                (HERE / (stem + ".txt")).write_text(text)
                print(f"{stem}: {len(text)} characters")
            except jinja2.exceptions.TemplateError as e:
                # The template refused the conversation (raise_exception): myco must say
                # the same words.
                (HERE / (stem + ".error")).write_text(f"raised: {e}")
                print(f"{stem}: raises {e}")
            except Exception as e:  # noqa: BLE001 - a template that cannot render this case
                (HERE / (stem + ".error")).write_text(f"failed: {type(e).__name__}: {e}")
                print(f"{stem}: fails: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
