"""Calls the hai server for a test that cannot reach it: run on a test host (the test
process is outside every host's network), it reads one JSON request per line on stdin,
``{"method": ..., "body": {...}}``, and answers one line: ``{"ok": reply}`` or
``{"error": "Kind: message"}``. HAI_SERVER and HAI_TOKEN name the server and the caller.
"""

import json
import os
import sys

from hai.errors import HaiError
from hai.rpc import ApiClient

api = ApiClient(os.environ["HAI_SERVER"], os.environ["HAI_TOKEN"])
for line in sys.stdin:
    request = json.loads(line)
    try:
        answer = {"ok": api.call(request["method"], **request["body"])}
    except HaiError as err:
        answer = {"error": f"{type(err).__name__}: {err}"}
    print(json.dumps(answer), flush=True)
