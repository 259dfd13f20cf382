"""OpenAI's Batch API through the official `openai` package against a running myco node
(run by cli/tests/batches.rs).

argv: the node's /v1 base URL, the LLM's name, the embedding model's name. Each check
prints one line; any failure raises (non-zero exit) with what was expected.
"""

import io
import json
import math
import sys
import time

import openai

BASE, LLM, EMBED = sys.argv[1:4]
SMALL = {"n_ctx": 256, "repeat_penalty": 1.0}

client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)


def check(what, cond, detail=""):
    if not cond:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok   {what}", flush=True)


def upload(lines, name="requests.jsonl"):
    body = "".join(json.dumps(l) + "\n" for l in lines).encode()
    return client.files.create(file=(name, io.BytesIO(body)), purpose="batch")


def wait(batch_id, until, limit=600):
    deadline = time.time() + limit
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in until:
            return b
        if time.time() > deadline:
            raise AssertionError(f"batch {batch_id} still {b.status} after {limit} s: {b}")
        time.sleep(0.5)


def lines_of(file_id):
    if file_id is None:
        return []
    return [json.loads(l) for l in client.files.content(file_id).text.splitlines() if l]


def alone(body):
    """The same request sent by itself (myco's own fields ride in extra_body)."""
    known = {k: v for k, v in body.items() if k not in SMALL}
    return client.chat.completions.create(**known, extra_body={k: body[k] for k in SMALL if k in body})


def chat_body(i, max_tokens=8):
    return {
        "model": LLM,
        "messages": [{"role": "user", "content": f"request number {i}: tell the swarm {i * 7}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **SMALL,
    }


# 1. A chat batch of 56 greedy lines: every custom_id once, each the answer the same request
#    gives alone.
N = 56
requests = [
    {"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(i)}
    for i in range(N)
]
f = upload(requests)
check("files.create", f.purpose == "batch" and f.bytes > 0 and f.status == "processed", f)
b = client.batches.create(
    input_file_id=f.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"suite": "batches"},
)
check("batches.create", b.status in ("validating", "in_progress") and b.metadata == {"suite": "batches"}, b)
done = wait(b.id, ("completed", "failed", "cancelled", "expired"))
check(
    "a chat batch completes",
    done.status == "completed"
    and done.request_counts.total == N
    and done.request_counts.completed == N
    and done.request_counts.failed == 0
    and done.output_file_id
    and done.error_file_id is None
    and done.completed_at is not None,
    done,
)
out = lines_of(done.output_file_id)
ids = [o["custom_id"] for o in out]
check("every custom_id once, in input order", ids == [r["custom_id"] for r in requests], ids[:5])
answers = {r["custom_id"]: alone(r["body"]).choices[0].message.content for r in requests}
differ = [
    o["custom_id"]
    for o in out
    if o["response"]["status_code"] != 200
    or o["response"]["body"]["choices"][0]["message"]["content"] != answers[o["custom_id"]]
]
check("each line's answer is the same request's alone (greedy)", not differ, differ[:5])
check(
    "output lines have OpenAI's shape",
    all(o["id"].startswith("batch_req_") and o["error"] is None and o["response"]["request_id"] for o in out)
    and out[0]["response"]["body"]["object"] == "chat.completion"
    and out[0]["response"]["body"]["usage"]["completion_tokens"] > 0,
    out[0],
)
listed = [x.id for x in client.batches.list(limit=100)]
check("batches.list has it", b.id in listed, listed)
outfile = client.files.retrieve(done.output_file_id)
check("the output is a file", outfile.purpose == "batch_output" and outfile.bytes > 0, outfile)

# 2. An embeddings batch: each line's vectors are the same request's alone.
texts = [f"the swarm embeds document {i}" for i in range(12)]
erequests = [
    {
        "custom_id": f"emb-{i}",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": EMBED, "input": [t, t + " again"], "encoding_format": "float"},
    }
    for i, t in enumerate(texts)
]
eb = client.batches.create(
    input_file_id=upload(erequests, "embeddings.jsonl").id,
    endpoint="/v1/embeddings",
    completion_window="24h",
)
edone = wait(eb.id, ("completed", "failed", "cancelled", "expired"))
check("an embeddings batch completes", edone.status == "completed" and edone.request_counts.completed == 12, edone)
eout = lines_of(edone.output_file_id)
worst = 0.0
for o, r in zip(eout, erequests):
    one = client.embeddings.create(**r["body"])
    for got, want in zip(o["response"]["body"]["data"], one.data):
        worst = max(worst, max(abs(x - y) for x, y in zip(got["embedding"], want.embedding)))
check(
    "each line's vectors are the same request's alone",
    [o["custom_id"] for o in eout] == [r["custom_id"] for r in erequests] and worst < 1e-4,
    worst,
)

# 3. Cancel mid-run: the lines that finished are in the output, the rest cancelled.
M = 120
crequests = [
    {"custom_id": f"long-{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(i, 96)}
    for i in range(M)
]
cb = client.batches.create(
    input_file_id=upload(crequests, "long.jsonl").id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
)
deadline = time.time() + 300
while client.batches.retrieve(cb.id).request_counts.completed < 2:
    if time.time() > deadline:
        raise AssertionError("no line of the batch to cancel finished")
    time.sleep(0.2)
cancelling = client.batches.cancel(cb.id)
check("batches.cancel", cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at, cancelling)
cdone = wait(cb.id, ("cancelled", "completed", "failed", "expired"))
cout = lines_of(cdone.output_file_id)
cerr = lines_of(cdone.error_file_id)
every = sorted([o["custom_id"] for o in cout] + [e["custom_id"] for e in cerr])
check(
    "a cancelled batch ends cancelled, the finished lines in its output",
    cdone.status == "cancelled"
    and cdone.cancelled_at is not None
    and len(cout) >= 2
    and len(cerr) > 0
    and every == sorted(r["custom_id"] for r in crequests)
    and all(e["error"]["code"] == "batch_cancelled" for e in cerr if e["response"] is None),
    (cdone, len(cout), len(cerr)),
)
try:
    client.batches.cancel(b.id)
    raise AssertionError("cancelling a completed batch was taken")
except openai.BadRequestError as e:
    check("a completed batch cannot be cancelled", "completed" in str(e), e)

# 4. A window that ends mid-run: the batch expires with what finished. Far more work than
#    10 s holds on any machine this runs on (240 lines of 160 tokens).
X = 240
xrequests = [
    {"custom_id": f"late-{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(i + 100, 160)}
    for i in range(X)
]
xb = client.batches.create(
    input_file_id=upload(xrequests, "late.jsonl").id,
    endpoint="/v1/chat/completions",
    completion_window="10s",
)
xdone = wait(xb.id, ("expired", "completed", "failed", "cancelled"), limit=120)
xout = lines_of(xdone.output_file_id)
xerr = lines_of(xdone.error_file_id)
check(
    "a batch past its window expires, what finished in its output",
    xdone.status == "expired"
    and xdone.expired_at is not None
    and len(xerr) > 0
    and all(o["response"]["status_code"] == 200 for o in xout)
    and sorted([o["custom_id"] for o in xout] + [e["custom_id"] for e in xerr])
    == sorted(r["custom_id"] for r in xrequests)
    and any(e["error"] and e["error"]["code"] == "batch_expired" for e in xerr),
    (xdone, len(xout), len(xerr)),
)

# 5. A file with bad lines fails at once, every bad line named; nothing runs.
bad = [
    requests[0],
    {"custom_id": "chat-0", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(1)},
    {"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": chat_body(2)},
    {"custom_id": "y", "method": "POST", "url": "/v1/chat/completions", "body": {**chat_body(3), "model": "nope.gguf"}},
]
badfile = upload(bad, "bad.jsonl")
fb = client.batches.create(input_file_id=badfile.id, endpoint="/v1/chat/completions", completion_window="24h")
fb = client.batches.retrieve(fb.id)
named = [(e.line, e.code) for e in fb.errors.data]
check(
    "bad lines fail the batch, each named",
    fb.status == "failed" and named == [(2, "duplicate_custom_id"), (3, "url_mismatch"), (4, "model_not_found")],
    named,
)
# A client's line naming a model file by path outside the node's data roots: refused.
outside = [{"custom_id": "o", "method": "POST", "url": "/v1/chat/completions", "body": {**chat_body(4), "model": "/etc/passwd"}}]
ob = client.batches.create(input_file_id=upload(outside, "outside.jsonl").id, endpoint="/v1/chat/completions", completion_window="24h")
ob = client.batches.retrieve(ob.id)
check(
    "a model path outside the data roots is a bad line",
    ob.status == "failed" and ob.errors.data[0].line == 1 and "data roots" in ob.errors.data[0].message,
    ob.errors,
)
try:
    client.batches.create(input_file_id="file-nonexistent", endpoint="/v1/chat/completions", completion_window="24h")
    raise AssertionError("an unknown file was taken")
except openai.NotFoundError as e:
    check("an unknown input file: 404", True)
try:
    client.batches.create(input_file_id=badfile.id, endpoint="/v1/responses", completion_window="24h")
    raise AssertionError("an unknown endpoint was taken")
except openai.BadRequestError as e:
    check("an unknown endpoint: 400", "endpoint" in str(e), e)

print("all batch checks ok")
