#!/usr/bin/env python3
"""Retrieval-augmented generation against a myco node, with nothing but Python's standard
library: search a collection (hybrid: vectors and BM25 keywords fused), put the best chunks
in the prompt, and stream the answer of an LLM the swarm holds, citing its sources.

    myco run examples/archive.toml             # builds the collection "example"
    myco node &                                # a node that keeps the models loaded
    python3 examples/rag.py "how much power does the mini PC draw?" \\
        --collection example --model qwen2.5-0.5b-instruct-q4_k_m

The node is the one of --home (default $MYCO_HOME or ~/.myco: the address it wrote to
node.addr, and its api.token), or --api ADDR ($MYCO_API) with $MYCO_API_TOKEN for a node
elsewhere.
--source/--type narrow the search to some files; --show-prompt prints what the model is
asked to stderr. Exit status: 0 answered, 1 the node failed, 2 bad input, 3 no node.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

SYSTEM = (
    "Answer the question from the numbered context passages only. Cite the passages you "
    "use as [1], [2]. If the passages do not hold the answer, say so."
)


def node(home, api):
    """The node's base URL and API token."""
    token = os.environ.get("MYCO_API_TOKEN", "").strip() or None
    if token is None:
        try:
            with open(os.path.join(home, "api.token")) as f:
                token = f.read().strip() or None
        except OSError:
            pass
    if not api:
        try:
            with open(os.path.join(home, "node.addr")) as f:
                api = f.read().strip()
        except OSError:
            fail(3, f"no node runs on {home} (no node.addr there): start one with `myco node`, or give --api")
    if "://" not in api:
        api = "http://" + api
    return api.rstrip("/"), token


def fail(code, message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def post(url, token, body, stream=False):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        resp = urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        fail(2 if 400 <= e.code < 500 else 1, f"{url}: {e.code}: {detail}")
    except urllib.error.URLError as e:
        fail(3, f"cannot reach the node at {url}: {e.reason}; start one with `myco node`, or give --api")
    if stream:
        return resp
    with resp:
        return json.load(resp)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("question")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--model", "-m", required=True, help="a GGUF model a node holds")
    p.add_argument("-k", type=int, default=4, help="passages to give the model")
    p.add_argument("--source", help="only files matching this glob (guide/**/*.md)")
    p.add_argument("--type", action="append", default=[], help="only files of this type (md)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--home", default=os.environ.get("MYCO_HOME") or os.path.expanduser("~/.myco"))
    p.add_argument("--api", default=os.environ.get("MYCO_API"), help="the node's address (127.0.0.1:7700) or URL")
    p.add_argument("--show-prompt", action="store_true")
    args = p.parse_args()

    base, token = node(args.home, args.api)
    query = {"collection": args.collection, "text": args.question, "k": args.k}
    filt = {}
    if args.source:
        filt["source"] = args.source
    if args.type:
        filt["types"] = args.type
    if filt:
        query["filter"] = filt
    hits = post(f"{base}/api/query", token, query)["hits"]
    if not hits:
        fail(1, "the search found nothing to answer from (is the collection built? any filter too narrow?)")

    context = []
    for i, h in enumerate(hits, 1):
        where = " > ".join(h.get("headings", []))
        title = h.get("title") or ""
        head = f"[{i}] {h['source']}" + (f" ({title}{': ' if title and where else ''}{where})" if title or where else "")
        context.append(f"{head}\n{h['text'].strip()}")
    prompt = "Context:\n\n" + "\n\n".join(context) + f"\n\nQuestion: {args.question}"
    if args.show_prompt:
        print(f"--- prompt ---\n{prompt}\n--------------", file=sys.stderr)

    body = {
        "model": args.model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0.2,
        "stream": True,
    }
    with post(f"{base}/v1/chat/completions", token, body, stream=True) as resp:
        for raw in resp:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                fail(1, f"the model failed: {event['error'].get('message', event['error'])}")
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    print(piece, end="", flush=True)
    print()
    print("\nSources:")
    for i, h in enumerate(hits, 1):
        print(f"  [{i}] {h['source']} #{h['index']}  (score {h['score']:.3f})")


if __name__ == "__main__":
    main()
