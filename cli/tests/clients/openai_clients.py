"""The real OpenAI clients against a running myco node (run by cli/tests/clients.rs).

argv: the node's /v1 base URL, the LLM's name, the embedding model's name. Each check
prints one line; any failure raises (non-zero exit) with what was expected.
"""

import math
import sys

import openai
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

BASE, LLM, EMBED = sys.argv[1:4]
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

# What myco does not do yet is refused by name, never ignored.
refused = {
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    "tool_choice": {"tool_choice": "auto"},
    "response_format.json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    },
    "logprobs": {"logprobs": True},
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
print("all clients ok")
