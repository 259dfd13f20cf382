"""The real OpenAI clients against a running myco node (run by cli/tests/clients.rs).

argv: the node's /v1 base URL, the LLM's name, the embedding model's name, the path of a
real chat template that knows tools (Qwen 2.5's). Each check
prints one line; any failure raises (non-zero exit) with what was expected.
"""

import math
import sys

import openai
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

BASE, LLM, EMBED, QWEN_TEMPLATE = sys.argv[1:5]
# myco's extension fields ride in extra_body, as with any OpenAI-compatible server.
SMALL = {"n_ctx": 256, "repeat_penalty": 1.0}

client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)


def check(what, cond, detail=""):
    if not cond:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok   {what}")


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def param_of(err):
    body = err.body if isinstance(err.body, dict) else {}
    return body.get("param", body.get("error", {}).get("param"))


# Embeddings with the client's defaults (it asks for base64).
e = client.embeddings.create(model=EMBED, input="the swarm embeds the archive")
vec = e.data[0].embedding
check("embeddings, default arguments", len(vec) == 384 and abs(cosine(vec, vec) - 1) < 1e-6, len(vec))
e2 = client.embeddings.create(model=EMBED, input=["one", "two"], encoding_format="float")
check("embeddings of a list, float", [d.index for d in e2.data] == [0, 1])

# Chat, not streamed and streamed: the same greedy text.
messages = [{"role": "user", "content": "hello swarm"}]
r = client.chat.completions.create(
    model=LLM, messages=messages, max_tokens=16, temperature=0, extra_body=SMALL
)
text = r.choices[0].message.content
check("chat", r.object == "chat.completion" and isinstance(text, str) and r.usage.completion_tokens > 0, r)
stream = client.chat.completions.create(
    model=LLM, messages=messages, max_tokens=16, temperature=0, stream=True, extra_body=SMALL
)
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
check("chat, streamed", streamed == text, f"{streamed!r} != {text!r}")

# Content as a list of text parts is the text they join to.
parts = client.chat.completions.create(
    model=LLM,
    messages=[{"role": "user", "content": [{"type": "text", "text": "hello swarm"}]}],
    max_tokens=16,
    temperature=0,
    extra_body=SMALL,
)
check("content parts", parts.choices[0].message.content == text)

# Completions, not streamed and streamed.
c = client.completions.create(model=LLM, prompt="the queue", max_tokens=12, temperature=0, extra_body=SMALL)
ctext = c.choices[0].text
cs = client.completions.create(
    model=LLM, prompt="the queue", max_tokens=12, temperature=0, stream=True, extra_body=SMALL
)
check("completions, streamed and not", "".join(x.choices[0].text for x in cs) == ctext and ctext)

# Seeds: the same seed samples the same text; without one, samples differ.
def sampled(**kw):
    return client.chat.completions.create(
        model=LLM, messages=messages, max_tokens=16, temperature=1.0, extra_body=SMALL, **kw
    ).choices[0].message.content


check("seed repeats", sampled(seed=7) == sampled(seed=7))
check("no seed is random", len({sampled() for _ in range(4)}) > 1)

# A stop string cuts the text before it.
if len(text) >= 6:
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    s = client.chat.completions.create(
        model=LLM, messages=messages, max_tokens=16, temperature=0, stop=[stop], extra_body=SMALL
    )
    cut = s.choices[0].message.content
    check("stop", stop not in cut and text.startswith(cut) and s.choices[0].finish_reason == "stop", cut)

# Models: listed and retrieved.
ids = [m.id for m in client.models.list().data]
check("models.list", LLM in ids and EMBED in ids, ids)
check("models.retrieve", client.models.retrieve(LLM).id == LLM)
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("an unknown model was found")
except openai.NotFoundError:
    print("ok   models.retrieve of an unknown model: 404")

# JSON mode: the grammar makes even random weights answer with a JSON object.
j = client.chat.completions.create(
    model=LLM,
    messages=[{"role": "user", "content": "answer in json"}],
    max_tokens=48,
    temperature=0,
    response_format={"type": "json_object"},
    extra_body=SMALL,
)
answer = j.choices[0].message.content
check("JSON mode", answer.startswith("{"), answer)
if j.choices[0].finish_reason == "stop":
    import json

    check("JSON mode, whole", isinstance(json.loads(answer), dict), answer)

# Prompt cache: a long conversation again reuses whole 512-token pieces of its prompt (the
# cache serves prefixes of 512 tokens or more, so that it never changes an answer).
long_chat = [
    {"role": "system", "content": "the node runs the job and the queue holds the work. " * 10},
    {"role": "user", "content": "hello swarm"},
]
LONG = {"n_ctx": 2048, "repeat_penalty": 1.0}
first = client.chat.completions.create(
    model=LLM, messages=long_chat, max_tokens=4, temperature=0, extra_body=LONG
)
again = client.chat.completions.create(
    model=LLM, messages=long_chat, max_tokens=4, temperature=0, extra_body=LONG
)
cached = again.usage.prompt_tokens_details.cached_tokens
check(
    "cached prompt tokens reported, whole pieces",
    cached >= 512 and cached % 512 == 0 and cached < again.usage.prompt_tokens,
    again.usage,
)
check("the same answer from the cache", again.choices[0].message.content == first.choices[0].message.content, again)

# Tools. The fixture's weights are random: the grammar made from the tools' schemas is what
# makes its calls well-formed. TOOLS_LONG: tools make long prompts for a vocabulary of about
# a character a token.
import json

TOOLS_LONG = {"n_ctx": 2048, "repeat_penalty": 1.0}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lyon"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}
ask = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]


def valid_call(call):
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        return set(args) == {"city", "days"} and args["city"] in ("Paris", "Oslo", "Lyon") and 1 <= args["days"] <= 7
    return call.function.name == "get_time" and set(args) == {"city"} and args["city"] in ("Paris", "Oslo")


def tool_request(template=None, **kw):
    body = dict(TOOLS_LONG)
    if template:
        body["chat_template"] = template
    return dict(model=LLM, messages=ask, max_tokens=256, temperature=0, tools=[WEATHER, TIME], extra_body=body, **kw)


QWEN = open(QWEN_TEMPLATE).read()
for label, template in [("the model's template (no tools in it: the generic format)", None), ("Qwen 2.5's template (Hermes format)", QWEN)]:
    named = client.chat.completions.create(
        **tool_request(template, tool_choice={"type": "function", "function": {"name": "get_time"}})
    )
    calls = named.choices[0].message.tool_calls or []
    check(
        f"tool_choice named, {label}",
        named.choices[0].finish_reason == "tool_calls" and len(calls) == 1 and calls[0].function.name == "get_time" and valid_call(calls[0]),
        named,
    )
    required = client.chat.completions.create(**tool_request(template, tool_choice="required", parallel_tool_calls=False))
    rcalls = required.choices[0].message.tool_calls or []
    check(f"tool_choice required, {label}", len(rcalls) == 1 and valid_call(rcalls[0]), required)
    # Streamed: the deltas assemble into the same call (greedy), under another id.
    assembled = {}
    for chunk in client.chat.completions.create(**tool_request(template, tool_choice="required", parallel_tool_calls=False), stream=True):
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = assembled.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                slot["id"] = d.id
            if d.function and d.function.name:
                slot["name"] += d.function.name
            if d.function and d.function.arguments:
                slot["arguments"] += d.function.arguments
    check(
        f"streamed tool calls assemble, {label}",
        list(assembled) == [0]
        and assembled[0]["id"]
        and (assembled[0]["name"], json.loads(assembled[0]["arguments"])) == (rcalls[0].function.name, json.loads(rcalls[0].function.arguments)),
        assembled,
    )

# A conversation with the call and its result renders and answers.
call = rcalls[0]
round_trip = ask + [
    {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": "21 C, clear"},
]
answer = client.chat.completions.create(
    model=LLM, messages=round_trip, max_tokens=16, temperature=0, tools=[WEATHER, TIME], tool_choice="none", extra_body=dict(TOOLS_LONG, chat_template=QWEN)
)
check("a tool round trip answers", answer.choices[0].finish_reason in ("stop", "length") and isinstance(answer.choices[0].message.content, str), answer)

# Structured output: the answer follows the JSON schema.
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
structured = client.chat.completions.create(
    model=LLM, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=64, temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}, extra_body=SMALL,
)
verdict = json.loads(structured.choices[0].message.content)
check("json_schema output validates", set(verdict) == {"answer", "confidence"} and verdict["answer"] in ("yes", "no") and 0 <= verdict["confidence"] <= 100, verdict)

# Log-probabilities with the likeliest alternatives; streamed, they gather to the same.
lp = client.chat.completions.create(
    model=LLM, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, extra_body=SMALL
)
content = lp.choices[0].logprobs.content
check(
    "logprobs with top_logprobs",
    len(content) == lp.usage.completion_tokens and all(len(t.top_logprobs) == 3 and t.logprob <= 0 and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4 for t in content)
    and "".join(t.token for t in content) == lp.choices[0].message.content,
    lp.choices[0].logprobs,
)
gathered = []
for chunk in client.chat.completions.create(
    model=LLM, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, extra_body=SMALL, stream=True
):
    if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
        gathered.extend(chunk.choices[0].logprobs.content)
check("logprobs, streamed", [(t.token, t.logprob) for t in gathered] == [(t.token, t.logprob) for t in content])
clp = client.completions.create(model=LLM, prompt="the queue", max_tokens=6, temperature=0, logprobs=2, extra_body=SMALL)
check("completions logprobs", len(clp.choices[0].logprobs.token_logprobs) == clp.usage.completion_tokens and all(len(t) <= 2 for t in clp.choices[0].logprobs.top_logprobs))

# What myco cannot do, or a malformed request: refused by name, never ignored.
refused = {
    "functions": {"functions": [{"name": "f", "parameters": {}}]},
    "tool_choice": {"tool_choice": "auto"},
    "tool_choice.function.name": {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    "tools[0].function.name": {"tools": [{"type": "function", "function": {"name": "a b"}}]},
    "top_logprobs": {"logprobs": True, "top_logprobs": 21},
    "messages[0].content[1].type": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
    },
}
for field, kw in refused.items():
    args = {"model": LLM, "messages": messages, "max_tokens": 4, "extra_body": SMALL}
    args.update(kw)
    try:
        client.chat.completions.create(**args)
        raise AssertionError(f"{field} was not refused")
    except openai.BadRequestError as err:
        check(f"refused: {field}", param_of(err) == field, err.body)

# LangChain: OpenAIEmbeddings sends cl100k_base token ids by default; ChatOpenAI chats.
emb = OpenAIEmbeddings(model=EMBED, base_url=BASE, api_key="unused", max_retries=0)
q = emb.embed_query("the swarm embeds the archive")
check("langchain OpenAIEmbeddings.embed_query (token ids)", cosine(q, vec) > 0.9999, cosine(q, vec))
docs = emb.embed_documents(["one", "two", "three"])
check("langchain OpenAIEmbeddings.embed_documents", len(docs) == 3 and all(len(d) == 384 for d in docs))
chat = ChatOpenAI(
    model=LLM, base_url=BASE, api_key="unused", max_tokens=16, temperature=0, max_retries=0,
    extra_body=SMALL,
)
said = chat.invoke("hello swarm").content
check("langchain ChatOpenAI.invoke", said == text, f"{said!r} != {text!r}")
check("langchain ChatOpenAI.stream", "".join(c.content for c in chat.stream("hello swarm")) == text)

# LangChain's tools and structured output, and an agent's loop (langchain-core alone): the
# model calls a tool, the tool's answer goes back, the model answers.
from typing import Literal

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field


@tool
def get_weather(city: Literal["Paris", "Oslo"], days: int) -> str:
    """The weather of a city for some days."""
    return f"{city}: clear for {days} days"


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confidence: int = Field(ge=0, le=100)


agent_llm = ChatOpenAI(
    model=LLM, base_url=BASE, api_key="unused", max_tokens=256, temperature=0, max_retries=0,
    extra_body=TOOLS_LONG,
)
bound = agent_llm.bind_tools([get_weather], tool_choice="get_weather")
ai = bound.invoke("What is the weather in Paris?")
check(
    "langchain bind_tools(tool_choice=...) gives tool_calls",
    len(ai.tool_calls) == 1 and ai.tool_calls[0]["name"] == "get_weather" and ai.tool_calls[0]["args"]["city"] in ("Paris", "Oslo"),
    ai,
)
v = agent_llm.with_structured_output(Verdict).invoke("Is the sky blue?")
check("langchain with_structured_output(Pydantic model)", isinstance(v, Verdict), v)
history = [HumanMessage("What is the weather in Oslo for 2 days?")]
step = agent_llm.bind_tools([get_weather], tool_choice="required").invoke(history)
history.append(step)
for call in step.tool_calls:
    history.append(get_weather.invoke(call))
final = agent_llm.bind_tools([get_weather], tool_choice="none").invoke(history)
check(
    "an agent's tool round trip",
    step.tool_calls and isinstance(history[-1], ToolMessage) and isinstance(final.content, str) and not final.tool_calls,
    final,
)
print("all clients ok")
