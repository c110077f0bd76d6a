#!/usr/bin/env python3
"""One HTTP call with a JSON answer, for the container scripts (no curl or jq needed).

    jhttp.py GET  URL [EXPR]
    jhttp.py POST URL BODY [EXPR]

Prints EXPR evaluated with `d` bound to the parsed answer (the whole answer without EXPR).
Exit status 1 when the request fails, or EXPR raises or is False, None or empty (a number,
0 included, is an answer), so `until jhttp.py …` polls a condition.
"""

import json
import sys
import urllib.error
import urllib.request


def main() -> int:
    method, url, *rest = sys.argv[1:]
    body = None
    if method == "POST":
        body, *rest = rest
    expr = rest[0] if rest else "d"
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
    if body is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        if expr == "d":
            print(f"{e.code} {text}", file=sys.stderr)
            return 1
    except OSError as e:
        print(f"{url}: {e}", file=sys.stderr)
        return 1
    try:
        d = json.loads(text)
        value = eval(expr, {"d": d})  # noqa: S307 - our own scripts' expressions
    except Exception as e:  # noqa: BLE001
        print(f"{url}: {e}", file=sys.stderr)
        return 1
    if value is False or value is None or (isinstance(value, (list, dict, str)) and not value):
        return 1
    print(value if isinstance(value, str) else json.dumps(value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
